"""Probe the sandbox from inside a real agent container and check every boundary held.

One run of two agents serves every test in this module: `probe` runs the probe
script, `neighbour` writes a marker file that the probe must not find. A
control container on the canary's network runs the same probe with the network
open, which shows that the probe would notice a reachable canary.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import docker
import pytest

from .conftest import BASE_IMAGE, TEST_LABEL, Project, agent_workspace, read_json, run_result

FAKE_SECRET_NAME = "AWS_SECRET_ACCESS_KEY"
PASSED_NAME = "ORCHESTRATE_TEST_PASSED"


@pytest.fixture(scope="module")
def probe_run(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, canary: str
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("isolation")
    project = Project(root=root, name=f"t-{secrets.token_hex(4)}", client=docker_client)
    project.source.mkdir()
    (project.source / "probe.py").write_bytes((Path(__file__).parent / "scripts" / "probe.py").read_bytes())
    # The runs folder inside the source exercises the mask that hides workspaces from the source view.
    project_runs = project.source / "runs"

    secret = f"fake-secret-{secrets.token_hex(8)}"
    marker = f"marker-{secrets.token_hex(6)}"
    manifest = project.manifest(
        [
            {
                "name": "probe",
                "command": [
                    "python3", "/workspace/src/probe.py", "--canary", canary, "--full", "--marker", marker,
                    "--secret-name", FAKE_SECRET_NAME,
                    "--secret-sha256", hashlib.sha256(secret.encode()).hexdigest(),
                ],
                "env": [PASSED_NAME],
                "resources": {"pids": 96},
                "timeout": "2m",
            },
            {"name": "neighbour", "command": ["sh", "-c", f"echo secret-work > {marker}; sleep 2"]},
        ]
    )
    environment = {**_environment(), FAKE_SECRET_NAME: secret, PASSED_NAME: "visible"}
    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project_runs), "--json", env=environment)
    try:
        result = run_result(completed.stdout)
    finally:
        for container in project.containers():
            container.remove(force=True)
    assert completed.returncode == 0, completed.stderr
    report = read_json(agent_workspace(result, "probe") / "probe.json")
    return {"result": result, "report": report, "secret": secret, "stderr": completed.stderr, "marker": marker}


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return environment


@pytest.fixture(scope="module")
def control_report(
    docker_client: docker.DockerClient, canary: str, canary_network: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run the probe on the canary's network, where it must reach the canary."""
    folder = tmp_path_factory.mktemp("control")
    (folder / "probe.py").write_bytes((Path(__file__).parent / "scripts" / "probe.py").read_bytes())
    folder.chmod(0o777)
    docker_client.containers.run(
        BASE_IMAGE, ["python3", "/probe/probe.py", "--canary", canary, "--out", "/probe/control.json"],
        network=canary_network, volumes={str(folder): {"bind": "/probe", "mode": "rw"}},
        labels={TEST_LABEL: "control"}, remove=True, user="1000:1000",
    )
    return read_json(folder / "control.json")


def test_control_probe_reaches_canary(control_report: dict[str, Any]) -> None:
    assert control_report["tcp_canary"] == {"ok": True, "detail": "canary"}
    assert control_report["dns_canary"]["ok"] is True


def test_tcp_to_canary_fails(probe_run: dict[str, Any]) -> None:
    assert probe_run["report"]["tcp_canary"]["ok"] is False


def test_dns_query_to_canary_fails(probe_run: dict[str, Any]) -> None:
    assert probe_run["report"]["dns_canary"]["ok"] is False


def test_only_loopback_interface(probe_run: dict[str, Any]) -> None:
    assert probe_run["report"]["interfaces"] == ["lo"]


def test_raw_socket_refused(probe_run: dict[str, Any]) -> None:
    assert probe_run["report"]["raw_socket"]["ok"] is False


def test_agent_uid_is_not_root(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    assert report["uid"] != 0
    assert report["gid"] != 0
    assert 0 not in report["groups"]


def test_no_capabilities_and_no_new_privileges(probe_run: dict[str, Any]) -> None:
    status = probe_run["report"]["status"]
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_source_write_fails_read_only(probe_run: dict[str, Any]) -> None:
    outcome = probe_run["report"]["write_source"]
    assert outcome["ok"] is False
    assert outcome["errno"] == "EROFS"


def test_root_filesystem_read_only(probe_run: dict[str, Any]) -> None:
    outcome = probe_run["report"]["write_root"]
    assert outcome["ok"] is False
    assert outcome["errno"] == "EROFS"


def test_workspace_tmp_and_home_writable(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    assert report["write_output"]["ok"] is True
    assert report["write_tmp"]["ok"] is True
    assert report["write_home"]["ok"] is True


def test_neighbour_workspace_invisible(probe_run: dict[str, Any]) -> None:
    marker = probe_run["marker"]
    assert probe_run["report"]["marker_paths"] == [f"/tmp/{marker}"]


def test_runs_folder_masked_in_source(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    assert "runs" in report["source_entries"]
    assert report["masked_runs_entries"] == []
    assert report["workspace_entries"] == ["output", "shared", "src"]


def test_fake_secret_absent(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    assert report["secret_name_present"] is False
    assert report["secret_value_present"] is False


def test_secret_never_written_to_run_folder(probe_run: dict[str, Any]) -> None:
    run_dir = Path(probe_run["result"]["run_dir"])
    leaked = [
        path for path in run_dir.rglob("*")
        if path.is_file() and probe_run["secret"].encode() in path.read_bytes()
    ]
    assert leaked == []


def test_named_variable_passed(probe_run: dict[str, Any]) -> None:
    inspect = read_json(Path(probe_run["result"]["run_dir"]) / "agents" / "probe.inspect.json")
    names = [item.partition("=")[0] for item in inspect["Config"]["Env"]]
    assert PASSED_NAME in names
    assert FAKE_SECRET_NAME not in names


def test_no_unix_socket_reachable(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    connected = [item["path"] for item in report["sockets"] if item["connect"]["ok"]]
    assert connected == []
    assert all(item["connect"]["ok"] is False for item in report["docker_socket"])


def test_no_setuid_files_or_sudo(probe_run: dict[str, Any]) -> None:
    report = probe_run["report"]
    assert report["setuid_files"] == []
    assert report["sudo"] is False


def test_pids_limit_in_force_inside(probe_run: dict[str, Any]) -> None:
    assert probe_run["report"]["pids_max"] == "96"


def test_effective_limits_recorded(probe_run: dict[str, Any]) -> None:
    probe = next(item for item in probe_run["result"]["agents"] if item["name"] == "probe")
    assert probe["effective_limits"]["pids"] == 96
    assert probe["effective_limits"]["memory"] == 1024**3
    assert probe["effective_limits"]["cpus"] == 1.0
