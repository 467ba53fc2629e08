"""Time limits, interrupts, vanished containers, limits in force and hidden files, on a real engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .conftest import Project, agent_workspace, read_json, run_result


def _agent(project: Project, result: dict, name: str) -> dict:
    return next(item for item in result["agents"] if item["name"] == name)


def test_agent_killed_after_timeout(project: Project) -> None:
    # A busy loop that ignores SIGTERM: only SIGKILL on the orchestrator's clock ends it.
    manifest = project.manifest(
        [{"name": "spinner", "command": ["sh", "-c", "trap '' TERM; while :; do :; done"], "timeout": "2s"}]
    )
    code, result = project.run_json(manifest, "--grace", "1")

    spinner = _agent(project, result, "spinner")
    assert code == 1
    assert spinner["state"] == "timed-out"
    assert spinner["seconds"] < 15
    inspect = read_json(Path(result["run_dir"]) / "agents" / "spinner.inspect.json")
    assert inspect["State"]["Running"] is False
    assert project.containers() == []


def test_sigint_leaves_no_container(project: Project) -> None:
    manifest = project.manifest(
        [{"name": name, "command": ["sleep", "600"]} for name in ("first", "second", "third")]
    )
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    project.wait_for_running(3)

    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert project.containers() == []
    states = {item["state"] for item in run_result(stdout)["agents"]}
    assert states == {"interrupted"}


def test_sigterm_leaves_no_container(project: Project) -> None:
    manifest = project.manifest([{"name": "sleeper", "command": ["sleep", "600"]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs))
    project.wait_for_running(1)

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)

    assert process.returncode == 130
    assert project.containers() == []


def test_vanished_container_is_evidence_missing(project: Project) -> None:
    # Removing the container from outside is tampering; with the policy at warn the run goes on to its end.
    manifest = project.manifest([{"name": "victim", "command": ["sleep", "600"]}], policy={"tampering": "warn"})
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    container = project.wait_for_running(1)[0]

    container.remove(force=True)
    stdout, stderr = process.communicate(timeout=60)

    victim = run_result(stdout)["agents"][0]
    assert process.returncode == 1, stderr
    assert victim["state"] == "evidence-missing"


def test_fork_bomb_stops_at_pids_limit(project: Project) -> None:
    bomb = (
        "import os, time\n"
        "deadline = time.time() + 5\n"
        "refused = 0\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(6)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        refused += 1\n"
        "        if refused > 50:\n"
        "            break\n"
        "open('/workspace/output/refused', 'w').write(str(refused))\n"
        "os._exit(0)\n"
    )
    manifest = project.manifest(
        [
            {"name": "bomb", "command": ["python3", "-c", bomb], "resources": {"pids": 32}, "timeout": "60s"},
            {"name": "steady", "command": ["sh", "-c", "sleep 1; echo alive > alive.txt"], "timeout": "60s"},
        ]
    )
    code, result = project.run_json(manifest)

    bomb_result = _agent(project, result, "bomb")
    steady = _agent(project, result, "steady")
    assert bomb_result["effective_limits"]["pids"] == 32
    assert int((agent_workspace(result, "bomb") / "refused").read_text()) > 0
    assert steady["state"] == "succeeded"
    assert (agent_workspace(result, "steady") / "alive.txt").read_text() == "alive\n"
    assert code == 0


def test_memory_hog_reported_out_of_memory(project: Project) -> None:
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n"
    manifest = project.manifest(
        [{"name": "hog", "command": ["python3", "-c", hog], "resources": {"memory": "64m"}, "timeout": "60s"}]
    )
    code, result = project.run_json(manifest)

    hog_result = _agent(project, result, "hog")
    assert code == 1
    assert hog_result["state"] == "failed"
    assert hog_result["oom_killed"] is True
    assert "memory limit" in hog_result["message"]


def test_hidden_folder_reported_and_cleaned(project: Project) -> None:
    manifest = project.manifest(
        [{"name": "hider", "command": ["sh", "-c", "mkdir -p out/x && echo data > out/x/f && chmod 000 out/x"]}]
    )
    code, result = project.run_json(manifest)

    hider = _agent(project, result, "hider")
    assert code == 1
    assert hider["state"] == "violation"
    assert any(finding.startswith("out/x:") for finding in hider["findings"])

    run_id = result["run_id"]
    completed = project.orchestrate("cleanup", run_id, "--remove-files", "--runs-dir", str(project.runs))
    assert completed.returncode == 0, completed.stderr
    assert not (project.runs / run_id).exists()


def test_failing_agent_keeps_others(project: Project) -> None:
    manifest = project.manifest(
        [
            {"name": "broken", "command": ["sh", "-c", "echo oops >&2; exit 3"]},
            {"name": "fine", "command": ["sh", "-c", "echo ok > ok.txt"]},
        ]
    )
    code, result = project.run_json(manifest)

    broken = _agent(project, result, "broken")
    assert code == 1
    assert broken["state"] == "failed"
    assert broken["exit_code"] == 3
    assert Path(broken["log"]).read_text() == "oops\n"
    assert _agent(project, result, "fine")["state"] == "succeeded"


def test_second_sigint_skips_grace(project: Project) -> None:
    # The agent ignores SIGTERM and the grace period is long, so only the second SIGINT ends it quickly.
    manifest = project.manifest([{"name": "stubborn", "command": ["sh", "-c", "trap '' TERM; sleep 600"]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--grace", "120")
    project.wait_for_running(1)

    process.send_signal(signal.SIGINT)
    _wait_for_line(process, "send it again")
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 30, stderr
    assert project.containers() == []


def test_unreachable_engine_exits_4(project: Project) -> None:
    manifest = project.manifest([{"name": "a", "command": ["true"]}])
    environment = dict(os.environ)
    # A socket path in the test's own folder where nothing listens.
    environment["DOCKER_HOST"] = f"unix://{project.root / 'absent.sock'}"
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])

    completed = project.orchestrate("run", str(manifest), env=environment)

    assert completed.returncode == 4
    assert "cannot reach the Docker engine" in completed.stderr
    assert "Traceback" not in completed.stderr


def _wait_for_line(process: subprocess.Popen[str], text: str) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return
    raise AssertionError(f"orchestrate exited without printing {text!r}")


def test_killed_orchestrator_stops_agents(project: Project) -> None:
    # SIGKILL gives orchestrate no chance to clean up: only the lifeline can stop the agents.
    manifest = project.manifest(
        [
            {"name": "sleeper", "command": ["sleep", "600"]},
            {"name": "stubborn", "command": ["sh", "-c", "trap '' TERM INT; sleep 600"]},
        ]
    )
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs))
    project.wait_for_running(2)
    active = json.loads(project.orchestrate("status", "--runs-dir", str(project.runs), "--json").stdout)

    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(item.status == "running" for item in project.containers()):
        time.sleep(0.1)

    containers = project.containers()
    assert len(containers) == 2
    assert [item.status for item in containers if item.status == "running"] == []

    run_id = containers[0].labels["orchestrate.run"]
    dead = json.loads(project.orchestrate("status", "--runs-dir", str(project.runs), "--json").stdout)
    assert [(item["run_id"], item["state"]) for item in active] == [(run_id, "active")]
    assert [(item["run_id"], item["state"], item["containers"]) for item in dead] == [(run_id, "dead", 2)]

    completed = project.orchestrate("cleanup", run_id, "--runs-dir", str(project.runs))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("removed container") == 2
    assert project.containers() == []


def test_agent_killing_watcher_ends_itself(project: Project) -> None:
    # An agent that kills the lifeline's watcher must not outlive it: the switch fails closed.
    # The watcher may not have become `cat` yet when the agent starts, so the agent looks until it has killed it.
    script = (
        "killed=; for try in $(seq 100); do for p in /proc/[0-9]*; do read -r name < $p/comm 2>/dev/null || continue; "
        '[ "$name" = cat ] && kill -KILL "${p#/proc/}" && killed=1; done; [ -n "$killed" ] && break; sleep 0.1; done; '
        "sleep 600"
    )
    manifest = project.manifest([{"name": "saboteur", "command": ["sh", "-c", script], "timeout": "2m"}])

    code, result = project.run_json(manifest)

    saboteur = result["agents"][0]
    assert code == 1
    assert saboteur["exit_code"] == 137
    assert saboteur["seconds"] < 30
