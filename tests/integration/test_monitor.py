"""The safety monitor on a real engine: each violation kind, its policy, the emergency stop and the evidence."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from .conftest import TEST_LABEL, Project, read_json, run_result

HOLD = "sleep 120"


def audit_records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    stdout, stderr = process.communicate(timeout=timeout)
    try:
        return process.returncode, run_result(stdout), stderr
    except (IndexError, ValueError):
        pytest.fail(f"no result (exit {process.returncode}):\n{stdout}\n{stderr}")


def test_conflict_stops_run_with_evidence(project: Project) -> None:
    writer = sh(f"echo $ORCHESTRATE_AGENT > report.md; echo wrote; {HOLD}")
    manifest = project.manifest(
        [{"name": "alpha", "command": writer}, {"name": "beta", "command": writer}],
        shared=[{"path": "report.md", "mode": "exclusive"}],
    )
    started = time.monotonic()
    code, result = project.run_json(manifest)
    elapsed = time.monotonic() - started

    assert code == 3, result
    assert result["stopped_by"]["kind"] == "write-conflict"
    assert result["stopped_by"]["agent"] in ("alpha", "beta")
    assert result["stopped_by"]["subject"] == "report.md"
    # Detected while both ran: neither reached the end of its two-minute sleep.
    assert elapsed < 60
    assert 0 < result["stop_seconds"] < 15
    assert project.containers() == []

    run_dir = Path(result["run_dir"])
    shutdown = audit_records(run_dir, "shutdown")
    assert len(shutdown) == 1
    assert shutdown[0]["within_deadline"] is True
    assert shutdown[0]["seconds"] == pytest.approx(result["stop_seconds"], abs=0.01)
    for name in ("alpha", "beta"):
        inspect = read_json(run_dir / "agents" / f"{name}.inspect.json")
        assert inspect["State"]["Running"] is False
        folder = run_dir / "evidence" / name
        assert "wrote" in (folder / "output.log").read_text(encoding="utf-8")
        listing = read_json(folder / "workspace.json")
        assert [entry["path"] for entry in listing["entries"] if entry["path"] != "."] == ["report.md"]
        assert (folder / "output.log").stat().st_mode & 0o222 == 0
    violations = read_json(run_dir / "evidence" / "violations.json")
    assert [item["kind"] for item in violations] == ["write-conflict"]
    evidence = audit_records(run_dir, "evidence")
    assert evidence and all(len(item["sha256"]) == 64 for item in evidence[0]["files"])
    verify = project.orchestrate("audit", "verify", str(run_dir), "--head", result["audit_head"])
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_stop_time_printed(project: Project) -> None:
    manifest = project.manifest(
        [{"name": "stray", "command": sh(f"echo x > stray.txt; {HOLD}"), "writes": ["docs/**"]}],
    )
    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs))
    assert completed.returncode == 3, completed.stderr
    match = re.search(r"run stopped (\d+\.\d+) s after the claim-violation \(deadline 15 s\)", completed.stderr)
    assert match, completed.stderr
    assert float(match.group(1)) < 15


@pytest.mark.parametrize(
    ("policy", "expected_code"),
    [("warn", 1), ("stop-agent", 1)],
)
def test_claim_violation_policy(project: Project, policy: str, expected_code: int) -> None:
    manifest = project.manifest(
        [
            {"name": "stray", "command": sh(f"echo x > stray.txt; {HOLD if policy == 'stop-agent' else 'sleep 1'}"),
             "writes": ["docs/**"]},
            {"name": "calm", "command": sh("mkdir -p calm && echo ok > calm/ok.md; sleep 2"), "writes": ["calm/**"]},
        ],
        policy={"claim-violation": policy},
    )
    code, result = project.run_json(manifest)
    states = {item["name"]: item["state"] for item in result["agents"]}
    assert code == expected_code, result
    assert result["stopped_by"] is None
    assert states["calm"] == "succeeded"
    assert states["stray"] == "violation"
    # Records with an action come from the monitor; the publisher's own findings follow without one.
    records = [item for item in audit_records(Path(result["run_dir"]), "violation") if "action" in item]
    assert [(item["violation"], item["agent"], item["subject"], item["action"]) for item in records] == [
        ("claim-violation", "stray", "stray.txt", policy)
    ]
    if policy == "stop-agent":
        stopped = audit_records(Path(result["run_dir"]), "agent-stopped")
        assert [item["agent"] for item in stopped] == ["stray"]


@pytest.mark.parametrize(
    ("script", "subject"),
    [
        ("ln -s /etc/shadow leak", "leak"),
        ("mkfifo pipe", "pipe"),
        ("echo x > a; ln a b", "b"),
        ("echo x > tool; chmod 4755 tool", "tool"),
    ],
)
def test_escape_attempts_stop_the_run(project: Project, script: str, subject: str) -> None:
    manifest = project.manifest([{"name": "escaper", "command": sh(f"{script}; {HOLD}")}])
    code, result = project.run_json(manifest)
    assert code == 3, result
    assert result["stopped_by"]["kind"] == "escape-attempt"
    assert result["stopped_by"]["agent"] == "escaper"
    assert result["stopped_by"]["subject"] in (subject, "a")
    assert project.containers() == []


def test_quota_exceeded_stops_the_run(project: Project) -> None:
    manifest = project.manifest(
        [{"name": "hoarder", "command": sh(f"for i in 1 2 3 4 5 6 7 8; do echo $i > f$i; done; {HOLD}")}],
        limits={"max_files": 5},
    )
    code, result = project.run_json(manifest)
    assert code == 3, result
    assert result["stopped_by"]["kind"] == "quota-exceeded"
    assert result["stopped_by"]["agent"] == "hoarder"
    assert "over the limit of 5" in result["stopped_by"]["detail"]


def test_tampering_outside_exec(project: Project) -> None:
    manifest = project.manifest([{"name": "target", "command": sh(HOLD)}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    container = project.wait_for_running(1)[0]
    subprocess.run(["docker", "exec", container.id, "true"], check=False, capture_output=True, timeout=30)
    code, result, stderr = finish(process)
    assert code == 3, stderr
    assert result["stopped_by"]["kind"] == "tampering"
    assert result["stopped_by"]["subject"].startswith("exec_")
    assert result["stopped_by"]["agent"] == "target"
    assert project.containers() == []


def test_tampering_network_attached(
    project: Project, docker_client: docker.DockerClient
) -> None:
    network = docker_client.networks.create(
        f"orchestrate-test-attach-{secrets.token_hex(3)}", driver="bridge", internal=True,
        labels={TEST_LABEL: "attach"},
    )
    try:
        manifest = project.manifest([{"name": "target", "command": sh(HOLD)}], monitor={"posture_interval": "1s"})
        process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
        container = project.wait_for_running(1)[0]
        attached_at = time.monotonic()
        connect = ["docker", "network", "connect", network.name, container.id]
        if subprocess.run(connect, capture_output=True, timeout=30).returncode != 0:
            # Some engines refuse a second network next to "none"; then an attacker disconnects "none" first.
            subprocess.run(["docker", "network", "disconnect", "none", container.id], check=True, timeout=30)
            subprocess.run(connect, check=True, timeout=30)
        code, result, stderr = finish(process)
        assert code == 3, stderr
        assert result["stopped_by"]["kind"] in ("tampering", "posture-drift")
        # Caught within the posture interval plus one second; the rest is the stop and the evidence.
        assert time.monotonic() - attached_at < 1 + 1 + 15
        assert project.containers() == []
    finally:
        # A container removed while connected leaves its endpoint behind on Docker 20.10; force it out by name.
        for item in (docker_client.api.inspect_network(network.id).get("Containers") or {}).values():
            subprocess.run(["docker", "network", "disconnect", "-f", network.name, item["Name"]],
                           capture_output=True, timeout=30, check=False)
        network.remove()


def test_flood_keeps_run_healthy(project: Project) -> None:
    flood = (
        "import os\n"
        "for folder in range(20):\n"
        "    os.makedirs(f'flood/d{folder}')\n"
        "    for index in range(1000):\n"
        "        open(f'flood/d{folder}/f{index}', 'w').close()\n"
    )
    manifest = project.manifest(
        [{"name": "flooder", "command": ["python3", "-c", flood], "writes": ["flood/**"]}],
    )
    code, result = project.run_json(manifest)
    assert code == 0, result
    assert result["violations"] == 0
    assert result["agents"][0]["files"] == 20_000
    published = project.root / "generated" / "flood"
    assert sum(1 for _ in published.rglob("f*")) == 20_000


def test_thirty_stubborn_agents_stop_within_the_deadline(project: Project) -> None:
    # Every agent ignores SIGTERM and keeps a waiting thread busy, yet the stop has
    # threads of its own, kills after the grace period, and counts a container stopped only by inspect.
    stubborn = sh(f"trap '' TERM; {HOLD}")
    agents = [{"name": f"a{index:02d}", "command": stubborn, "writes": [f"a{index:02d}/**"]} for index in range(30)]
    manifest = project.manifest(agents)
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    running = project.wait_for_running(30, deadline=120)
    run_id = running[0].labels["orchestrate.run"]
    (project.runs / run_id / "agents" / "a07" / "stray.txt").write_text("outside every claim\n")

    code, result, stderr = finish(process, timeout=120)
    assert code == 3, stderr
    assert result["stopped_by"]["kind"] == "claim-violation"
    assert result["stop_seconds"] < 15
    assert project.containers() == []
    killed = [item for item in result["agents"] if item["exit_code"] == 137]
    assert len(killed) == 30


def test_posture_drift_changed_limit(project: Project) -> None:
    # With tampering at warn, the update event is only recorded; the posture check then stops the run.
    manifest = project.manifest(
        [{"name": "target", "command": sh(HOLD), "resources": {"memory": "256m"}}],
        policy={"tampering": "warn"}, monitor={"posture_interval": "1s"},
    )
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    container = project.wait_for_running(1)[0]
    changed_at = time.monotonic()
    subprocess.run(["docker", "update", "--memory", "300m", "--memory-swap", "300m", container.id],
                   check=True, capture_output=True, timeout=30)
    code, result, stderr = finish(process)
    assert code == 3, stderr
    assert result["stopped_by"]["kind"] == "posture-drift"
    assert result["stopped_by"]["agent"] == "target"
    assert result["stopped_by"]["subject"] == "memory"
    assert time.monotonic() - changed_at < 1 + 1 + 15
    warned = [item for item in audit_records(Path(result["run_dir"]), "violation") if item.get("action") == "warn"]
    assert [item["violation"] for item in warned] == ["tampering"]


def test_files_published_while_running_are_counted(project: Project) -> None:
    manifest = project.manifest([{"name": "writer", "command": sh("echo a > a.txt; sleep 2; echo b > b.txt")}])
    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    result = lines[-1]
    assert completed.returncode == 0, completed.stderr
    # a.txt was published while the agent slept; the total counts it although it was unchanged at the exit.
    early = [item for item in lines[:-1] if item["kind"] == "published"]
    assert early and "a.txt" in early[0]["data"]["paths"]
    assert result["agents"][0]["published"] == 2
    assert (project.root / "generated" / "a.txt").read_text() == "a\n"


def test_cleanup_refuses_an_active_run(project: Project) -> None:
    manifest = project.manifest([{"name": "sleeper", "command": sh(HOLD)}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    container = project.wait_for_running(1)[0]
    run_id = container.labels["orchestrate.run"]
    refused = project.orchestrate("cleanup", run_id, "--runs-dir", str(project.runs))
    assert refused.returncode == 2
    assert f"orchestrate stop {run_id}" in refused.stderr
    container.reload()
    assert container.status == "running"
    stopped = project.orchestrate("stop", run_id, "--runs-dir", str(project.runs))
    assert stopped.returncode == 0, stopped.stderr
    assert finish(process)[0] == 130


def test_publish_skips_file_still_open(project: Project) -> None:
    # Closing a second descriptor sends IN_CLOSE_WRITE while the first one still writes.
    writer = (
        "import os, time\n"
        "first = os.open('partial.txt', os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "os.write(first, b'PART-ONE\\n')\n"
        "os.close(os.open('partial.txt', os.O_WRONLY))\n"
        "time.sleep(4)\n"
        "os.write(first, b'PART-TWO\\n')\n"
        "os.close(first)\n"
    )
    manifest = project.manifest([{"name": "writer", "command": ["python3", "-c", writer]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    project.wait_for_running(1)
    published = project.root / "generated" / "partial.txt"
    time.sleep(2.5)
    early = published.read_text() if published.exists() else None
    code, result, stderr = finish(process)
    assert code == 0, stderr
    assert early is None, f"a partial file was published while it was open: {early!r}"
    assert published.read_text() == "PART-ONE\nPART-TWO\n"
