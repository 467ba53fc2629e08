"""The egress broker on a real engine: the key reaches the mock API and never the agent, no other route works.

Nothing here can leave the machine: the broker's upstream network is an
internal network of the test's own (`broker.upstream_network: internal`),
holding only the test's two mock APIs, and no test names a real host.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from .conftest import BASE_IMAGE, ORCHESTRATE, SCRIPTS, TEST_LABEL, Project, _clean_environment, read_json, run_result
from .mock_upstream import MOCK_PORT, MockUpstream

SECRET = "sk-egress-test-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def upstream(mock_upstream: MockUpstream) -> MockUpstream:
    return mock_upstream


def egress_agent(upstream: MockUpstream, mode: str, settings: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "caller",
        "network": "allowlist",
        "command": ["python3", "/workspace/src/egress_probe.py", mode, json.dumps(settings)],
        "egress": {"allow_private": [f"{upstream.allowed}:{MOCK_PORT}"]},
        "apis": {"anthropic": {
            "upstream": f"http://{upstream.allowed}:{MOCK_PORT}", "base_url_env": "ANTHROPIC_BASE_URL",
            "secret": "ANTHROPIC_API_KEY", "header": "x-api-key", "placeholder_env": ["ANTHROPIC_API_KEY"],
        }},
        **fields,
    }


def broker_settings(upstream: MockUpstream, **fields: Any) -> dict[str, Any]:
    return {"upstream_network": "internal", "upstream_network_name": upstream.network, **fields}


def key_environment() -> dict[str, str]:
    return {**_clean_environment(), "ANTHROPIC_API_KEY": SECRET}


def audit_records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def run_networks(client: docker.DockerClient, run_id: str) -> list[str]:
    return [network.name for network in client.networks.list(filters={"label": f"orchestrate.run={run_id}"})]


def files_containing(folder: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [path for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]


@dataclass(frozen=True)
class ProbeRun:
    code: int
    result: dict[str, Any]
    run_dir: Path
    probe: dict[str, Any]
    seen: str


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
              upstream: MockUpstream) -> Iterator[ProbeRun]:
    """One run of the probing agent, whose findings the tests below check one by one."""
    project = Project(root=tmp_path_factory.mktemp("egress"), name=f"t-{secrets.token_hex(4)}", client=docker_client)
    project.source.mkdir()
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    other_ip = ipaddress.ip_address(upstream.other_ip)
    allowed_ip = ipaddress.ip_address(upstream.allowed_ip)
    settings = {
        "connect": [
            f"{upstream.other}:{MOCK_PORT}",
            f"{upstream.allowed}:{MOCK_PORT + 1}",
            f"{other_ip}:{MOCK_PORT}",
            f"{int(other_ip)}:{MOCK_PORT}",
            f"{hex(int(other_ip))}:{MOCK_PORT}",
            f"[::ffff:{other_ip}]:{MOCK_PORT}",
            f"{allowed_ip}:{MOCK_PORT}",
            "169.254.169.254:80",
            f"localhost:{MOCK_PORT}",
        ],
        "absolute": [f"http://{upstream.other}:{MOCK_PORT}/", f"http://{upstream.other_ip}:{MOCK_PORT}/"],
        "direct": [f"{upstream.other_ip}:{MOCK_PORT}", f"{upstream.allowed_ip}:{MOCK_PORT}"],
        "resolve": [upstream.other, upstream.allowed, "orchestrate-probe.invalid"],
    }
    manifest = project.manifest([egress_agent(upstream, "probe", settings)], broker=broker_settings(upstream))
    code, result = project.run_json(manifest, env=key_environment())
    run_dir = Path(result["run_dir"])
    workspace = run_dir / "agents" / "caller"
    try:
        probe = read_json(workspace / "egress.json")
        seen = (workspace / "seen.txt").read_text(encoding="utf-8")
    except OSError:
        pytest.fail(f"the probe wrote no results (exit {code}): {result}")
    yield ProbeRun(code, result, run_dir, probe, seen)
    for container in project.containers():
        container.remove(force=True)


def test_agent_reaches_api_through_broker(probe_run: ProbeRun) -> None:
    assert probe_run.code == 0, probe_run.result
    assert probe_run.probe["api"]["status"] == 200
    assert "mock-allowed part 2" in probe_run.probe["api"]["body"]


def test_mock_receives_real_key(probe_run: ProbeRun, upstream: MockUpstream) -> None:
    received = upstream.requests_seen(upstream.containers[0])
    keys = [request["headers"].get("x-api-key") for request in received]

    assert SECRET in keys
    # Other tests of the session use this mock too, with keys of their own, but never a placeholder.
    assert not any("placeholder" in json.dumps(request) for request in received)


def test_agent_never_sees_key(probe_run: ProbeRun) -> None:
    # Environment, /proc/*/environ and cmdline of every process, home, /tmp and /etc, as the agent read them.
    assert "ANTHROPIC_BASE_URL" in probe_run.seen
    assert SECRET not in probe_run.seen
    assert SECRET not in json.dumps(probe_run.probe)


def test_reflected_key_masked(probe_run: ProbeRun) -> None:
    # The mock's /echo route returns the request's headers: the broker masks the key it added.
    echo = probe_run.probe["echo"]

    assert echo["status"] == 200
    assert SECRET not in echo["body"]
    assert '"x-api-key": "' + "*" * len(SECRET) + '"' in echo["body"]


def test_key_absent_from_run_folder(probe_run: ProbeRun) -> None:
    # The plan, the audit log, the agent's log and inspect output, its workspace and the publish reports.
    assert files_containing(probe_run.run_dir, SECRET) == []


def test_other_mock_unreachable(probe_run: ProbeRun, upstream: MockUpstream) -> None:
    connect = probe_run.probe["connect"]

    for target, status in connect.items():
        assert status.startswith("HTTP/1.1 403"), f"CONNECT {target}: {status}"
    for url, status in probe_run.probe["absolute"].items():
        assert status.startswith("HTTP/1.1 405"), f"GET {url}: {status}"
    assert upstream.requests_seen(upstream.containers[1]) == []


def test_no_direct_route(probe_run: ProbeRun) -> None:
    for target, outcome in probe_run.probe["direct"].items():
        assert outcome.startswith("error"), f"direct connection to {target}: {outcome}"


def test_dns_for_other_names_fails_fast(probe_run: ProbeRun) -> None:
    for name, outcome in probe_run.probe["resolve"].items():
        assert str(outcome["result"]).startswith("error"), f"{name} resolved: {outcome}"
        # The broker refuses at once; a silent resolver would take the resolver's 10 s timeout.
        assert outcome["seconds"] < 3, f"{name}: {outcome}"


def test_requests_audited_without_secret(probe_run: ProbeRun, upstream: MockUpstream) -> None:
    requests = audit_records(probe_run.run_dir, "egress-request")
    api = [record for record in requests if record["route"] == "api" and record["status"] == 200]
    denied = [record for record in requests if record["denied"]]

    assert api[0]["host"] == upstream.allowed
    assert api[0]["method"] == "POST"
    assert api[0]["path"] == "/anthropic/v1/messages"
    assert api[0]["bytes_received"] > 0
    assert len(denied) >= len(probe_run.probe["connect"])
    assert audit_records(probe_run.run_dir, "egress-dns")
    assert "headers" not in json.dumps(requests)


def test_audit_log_verifies(probe_run: ProbeRun) -> None:
    completed = subprocess.run(
        [*ORCHESTRATE, "audit", "verify", str(probe_run.run_dir)],
        capture_output=True, text=True, env=_clean_environment(), check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_only_denials_reported(probe_run: ProbeRun) -> None:
    # The run's own network setup is no tampering: the only violations are the refused requests (warn).
    kinds = {record["violation"] for record in audit_records(probe_run.run_dir, "violation")}

    assert kinds == {"egress-denied"}


def test_networks_removed_after_run(probe_run: ProbeRun, docker_client: docker.DockerClient) -> None:
    assert run_networks(docker_client, probe_run.result["run_id"]) == []


def test_missing_key_stops_before_start(project: Project, upstream: MockUpstream) -> None:
    manifest = project.manifest([egress_agent(upstream, "burst", {"count": 1})], broker=broker_settings(upstream))

    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs))

    assert completed.returncode == 2, completed.stderr
    assert "ANTHROPIC_API_KEY" in completed.stderr
    assert "not set" in completed.stderr
    assert project.containers() == []


def test_request_limit_is_violation(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    manifest = project.manifest([egress_agent(upstream, "burst", {"count": 5})],
                                broker=broker_settings(upstream, max_requests=2))

    code, result = project.run_json(manifest, env=key_environment())

    assert code == 3, result
    assert result["stopped_by"]["kind"] == "egress-limit"
    assert result["stopped_by"]["agent"] == "caller"
    assert len(upstream.requests_seen(upstream.containers[0])) >= 2
    limits = [record for record in audit_records(Path(result["run_dir"]), "violation")
              if record["violation"] == "egress-limit"]
    assert limits[0]["evidence"]["max"] == 2


def wait_for_path(path: Path, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists():
            return
        time.sleep(0.1)
    pytest.fail(f"{path} did not appear within {deadline} s")


def broker_of(client: docker.DockerClient, run_id: str) -> Any:
    found = client.containers.list(filters={"label": [f"orchestrate.run={run_id}", "orchestrate.role=broker"]})
    assert len(found) == 1, found
    return found[0]


def started_run_dir(project: Project) -> Path:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        folders = [path for path in project.runs.glob("*") if path.is_dir()]
        if folders:
            return folders[0]
        time.sleep(0.1)
    pytest.fail("the run folder did not appear")


def test_broker_stopped_cuts_agent_off(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    # Each failed call waits for the resolver's timeout on the broker's name, so three are enough.
    settings = {"failures": 3, "direct": [f"{upstream.allowed_ip}:{MOCK_PORT}"]}
    # Warn only, so the run goes on and the agent's calls after the kill can be seen.
    manifest = project.manifest([egress_agent(upstream, "loop", settings)], broker=broker_settings(upstream),
                                policy={"broker-failure": "warn", "tampering": "warn"})
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json", env=key_environment())
    try:
        run_dir = started_run_dir(project)
        wait_for_path(run_dir / "agents" / "caller" / "first-ok")

        # validate accepts the agent's own egress network while it runs.
        validated = project.orchestrate("validate", run_dir.name, "--runs-dir", str(project.runs), "--json")
        assert validated.returncode == 0, validated.stdout + validated.stderr

        broker_of(project.client, run_dir.name).kill()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    result = run_result(stdout)
    outcomes = read_json(run_dir / "agents" / "caller" / "egress.json")
    assert 200 in outcomes["outcomes"]
    # After the kill, every call failed until the agent gave up: no other route took over.
    assert outcomes["outcomes"][-3:] == [0] * 3, outcomes
    assert all(item.startswith("error") for item in outcomes["direct_after"])
    violations = audit_records(run_dir, "violation")
    failures = [record for record in violations if record["violation"] == "broker-failure"]
    assert len(failures) == 1, stderr
    # The kill came from outside orchestrate, so it is tampering with the broker as well.
    assert any(record["violation"] == "tampering" and record["agent"] == "egress broker" for record in violations)
    assert result["agents"][0]["state"] == "succeeded"


def test_network_connect_is_tampering(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    settings = {"failures": 1_000_000}
    manifest = project.manifest([egress_agent(upstream, "loop", settings, timeout="90s")],
                                broker=broker_settings(upstream))
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json", env=key_environment())
    try:
        run_dir = started_run_dir(project)
        wait_for_path(run_dir / "agents" / "caller" / "first-ok")
        [agent] = [item for item in project.containers() if item.labels.get("orchestrate.agent") == "caller"]

        # Someone else attaches the agent to a second network: a route the plan does not have.
        project.client.networks.get(upstream.network).connect(agent)
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    result = run_result(stdout)
    assert process.returncode == 3, result
    assert result["stopped_by"]["kind"] in ("tampering", "posture-drift")
    assert "network" in result["stopped_by"]["detail"]


def test_outsider_on_egress_network_is_tampering(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    manifest = project.manifest([egress_agent(upstream, "loop", {"failures": 1_000_000}, timeout="90s")],
                                broker=broker_settings(upstream))
    outsider = project.client.containers.run(BASE_IMAGE, ["sleep", "120"], detach=True,
                                             labels={TEST_LABEL: "egress-outsider"})
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json", env=key_environment())
    try:
        run_dir = started_run_dir(project)
        wait_for_path(run_dir / "agents" / "caller" / "first-ok")
        [network] = project.client.networks.list(filters={"label": [f"orchestrate.run={run_dir.name}",
                                                                    "orchestrate.role=egress"]})

        # A container outside the run on the agent's own network could reach the agent past the broker.
        network.connect(outsider)
        stdout, _ = process.communicate(timeout=120)
        outsider.reload()
        outsider_status = outsider.status
    finally:
        if process.poll() is None:
            process.kill()
        outsider.remove(force=True)

    result = run_result(stdout)
    assert process.returncode == 3, result
    assert result["stopped_by"]["kind"] == "tampering"
    assert result["stopped_by"]["agent"] == "caller"
    assert "outside the run" in result["stopped_by"]["detail"]
    # The run still removes its network, and leaves the outsider running.
    assert project.client.networks.list(filters={"label": f"orchestrate.run={run_dir.name}"}) == []
    assert outsider_status == "running"


def test_exec_into_broker_is_tampering(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    manifest = project.manifest([egress_agent(upstream, "loop", {"failures": 1_000_000}, timeout="90s")],
                                broker=broker_settings(upstream))
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json", env=key_environment())
    try:
        run_dir = started_run_dir(project)
        wait_for_path(run_dir / "agents" / "caller" / "first-ok")

        # The broker holds the keys: reading its process from an exec is what this catches. The exec also shows
        # that the broker, which sits on every agent network and the upstream one, routes no packet between them.
        forwarding = broker_of(project.client, run_dir.name).exec_run(
            ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"])
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    result = run_result(stdout)
    assert forwarding.output == b"0\n0\n"
    assert process.returncode == 3, result
    assert result["stopped_by"]["kind"] == "tampering"
    assert result["stopped_by"]["agent"] == "egress broker"
    assert "exec" in result["stopped_by"]["detail"]


def test_cleanup_removes_broker_and_networks(project: Project, upstream: MockUpstream) -> None:
    shutil.copy(SCRIPTS / "egress_probe.py", project.source / "egress_probe.py")
    manifest = project.manifest([egress_agent(upstream, "loop", {"failures": 3}, timeout="90s")],
                                broker=broker_settings(upstream))
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json", env=key_environment())
    try:
        run_dir = started_run_dir(project)
        wait_for_path(run_dir / "agents" / "caller" / "first-ok")
        broker = broker_of(project.client, run_dir.name)
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    # The broker's input closed with orchestrate, so it exits by itself: the agents lose their route.
    end = time.monotonic() + 20
    while time.monotonic() < end and broker.status != "exited":
        time.sleep(0.2)
        broker.reload()
    assert broker.status == "exited"
    assert run_networks(project.client, run_dir.name)

    completed = project.orchestrate("cleanup", run_dir.name, "--runs-dir", str(project.runs))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "removed network" in completed.stdout
    assert run_networks(project.client, run_dir.name) == []
    assert project.containers() == []
