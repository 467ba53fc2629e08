"""The seccomp profile and gVisor isolation on a real engine, and `orchestrate doctor` on this machine."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.seccomp import shipped_profile

from .conftest import BASE_IMAGE, SCRIPTS, TEST_LABEL, Project, agent_workspace, read_json

DENIED = ["unshare", "mount", "keyctl", "ptrace", "bpf", "userfaultfd", "io_uring_setup", "setns",
          "perf_event_open", "socket(AF_VSOCK)"]


def inspect_of(result: dict[str, Any], name: str) -> dict[str, Any]:
    return read_json(agent_workspace(result, name).parent / f"{name}.inspect.json")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def seccomp_run(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> dict[str, Any]:
    project = Project(root=tmp_path_factory.mktemp("seccomp"), name="t-seccomp", client=docker_client)
    project.source.mkdir()
    shutil.copy(SCRIPTS / "syscalls.py", project.source / "syscalls.py")
    manifest = project.manifest([{"name": "probe", "command": ["sh", "-c", "python3 /workspace/src/syscalls.py "
                                                               "> /workspace/output/report.json"]}])
    code, result = project.run_json(manifest)
    try:
        assert code == 0, result
        report = read_json(agent_workspace(result, "probe") / "report.json")
    finally:
        for container in project.containers():
            container.remove(force=True)
    return {"result": result, "report": report}


@pytest.mark.parametrize("name", DENIED)
def test_profile_denies_call(seccomp_run: dict[str, Any], name: str) -> None:
    # The profile returns EPERM. Without it, these calls fail with other errors (EINVAL, EFAULT) or succeed.
    assert seccomp_run["report"][name] == "EPERM"


def test_clone3_reports_enosys(seccomp_run: dict[str, Any]) -> None:
    assert seccomp_run["report"]["clone3"] == "ENOSYS"


def test_everyday_work_allowed(seccomp_run: dict[str, Any]) -> None:
    work = seccomp_run["report"]["work"]

    assert work["shell"] == "shell"
    assert work["coreutils"] == "a"
    assert work["thread"] == "thread"
    assert work["write"] == "written"
    assert work["unix socket"] == "unix"
    assert work.get("git", "git") == "git"


def test_inspect_shows_profile(seccomp_run: dict[str, Any]) -> None:
    options = inspect_of(seccomp_run["result"], "probe")["HostConfig"]["SecurityOpt"]
    profiles = [option.removeprefix("seccomp=") for option in options if option.startswith("seccomp=")]

    assert len(profiles) == 1
    assert hashlib.sha256(profiles[0].encode()).hexdigest() == shipped_profile().sha256


def test_default_profile_allows_vsock_probe(docker_client: docker.DockerClient) -> None:
    """Control: under the engine's default profile the same probe gets past seccomp, so EPERM above is ours."""
    script = (SCRIPTS / "syscalls.py").read_text(encoding="utf-8")
    container = docker_client.containers.run(
        BASE_IMAGE, ["python3", "-c", script, "ptrace"], detach=True, labels={TEST_LABEL: "seccomp-control"},
        network_mode="none", cap_drop=["ALL"], user="1000:1000", entrypoint=[],
        tmpfs={"/workspace/output": "uid=1000,gid=1000"},
    )
    try:
        container.wait(timeout=60)
        report = json.loads(container.logs(stderr=False))
    finally:
        container.remove(force=True)

    assert report["io_uring_setup"] != "EPERM"
    assert report["socket(AF_VSOCK)"] != "EPERM"


def test_gvisor_agent_runs_on_runsc(project: Project) -> None:
    command = "cat /proc/version > /workspace/output/version.txt; id -u > /workspace/output/uid.txt"
    manifest = project.manifest([{"name": "sandboxed", "isolation": "gvisor", "command": ["sh", "-c", command]}])

    code, result = project.run_json(manifest)

    assert code == 0, result
    assert inspect_of(result, "sandboxed")["HostConfig"]["Runtime"] == "runsc"
    workspace = agent_workspace(result, "sandboxed")
    # gVisor reports its own kernel, Linux 4.4.0, whatever the host runs.
    assert (workspace / "version.txt").read_text() != Path("/proc/version").read_text()
    assert (workspace / "uid.txt").read_text().strip() != "0"
    # The limits were read back from the sandbox's cgroup on the host.
    assert result["agents"][0]["effective_limits"]["pids"] == 256


def test_doctor_passes_here(project: Project) -> None:
    completed = project.orchestrate("doctor", "--json", "--runs-dir", str(project.runs))

    document = json.loads(completed.stdout)
    statuses = {check["name"]: check["status"] for check in document["checks"]}
    assert completed.returncode == 0, completed.stdout
    assert statuses["docker"] == "ok"
    assert statuses["base image"] == "ok"
    assert statuses["seccomp profile"] == "ok"
    assert statuses["runtime runsc"] == "ok"
