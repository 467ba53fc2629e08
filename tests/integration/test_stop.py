"""`orchestrate stop` and `orchestrate status RUN` against a live `orchestrate run` and a real engine."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import docker.errors

from .conftest import BASE_IMAGE, TEST_LABEL, Project, read_json


def _run_folder_id(project: Project, deadline: float = 60) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        folders = [path.name for path in project.runs.iterdir()] if project.runs.is_dir() else []
        if folders:
            return folders[0]
        time.sleep(0.1)
    raise AssertionError(f"no run folder appeared in {project.runs} within {deadline} s")


def _status(project: Project, run_id: str) -> dict[str, Any]:
    completed = project.orchestrate("status", run_id, "--runs-dir", str(project.runs), "--json")
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def _wait_until_running(project: Project, process: subprocess.Popen[str], deadline: float = 60) -> str:
    """Wait until `orchestrate status RUN` shows the run active with every agent's container running."""
    run_id = _run_folder_id(project, deadline)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, f"orchestrate run exited early with {process.returncode}"
        status = _status(project, run_id)
        if status["state"] == "active" and all(row["container_state"] == "running" for row in status["agents"]):
            return run_id
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not show a running container within {deadline} s")


def _stop(project: Project, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    completed = project.orchestrate("stop", *args, "--runs-dir", str(project.runs), "--json")
    try:
        document: dict[str, Any] = json.loads(completed.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"orchestrate stop printed no JSON:\n{completed.stdout}\n{completed.stderr}") from exc
    return completed, document


def test_stop_ends_active_run(project: Project) -> None:
    manifest = project.manifest([{"name": "sleeper", "command": ["sleep", "300"]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--grace", "5")
    try:
        run_id = _wait_until_running(project, process)
        active = _status(project, run_id)

        completed, report = _stop(project, run_id)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    run_dir = project.runs / run_id
    assert active["pid"] == process.pid
    assert [row["agent"] for row in active["agents"]] == ["sleeper"]
    assert active["agents"][0]["state"] is None
    assert completed.returncode == 0, completed.stderr
    assert process.returncode == 130, stderr
    assert report["outcome"] == "stopped"
    assert report["run_exit_code"] == 130
    assert [item for item in project.containers() if item.status == "running"] == []
    assert read_json(run_dir / "result.json")["exit_code"] == 130
    assert read_json(run_dir / "stop-request.json")["now"] is False
    finished = _status(project, run_id)
    assert finished["state"] == "finished"
    assert finished["agents"][0]["state"] == "interrupted"


def test_stop_now_skips_grace(project: Project) -> None:
    # The agent ignores SIGTERM and the grace period is long, so only --now ends the run quickly.
    manifest = project.manifest([{"name": "stubborn", "command": ["sh", "-c", "trap '' TERM; sleep 300"]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--grace", "120")
    try:
        run_id = _wait_until_running(project, process)

        started = time.monotonic()
        completed, report = _stop(project, run_id, "--now")
        seconds = time.monotonic() - started
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    assert completed.returncode == 0, completed.stderr
    assert process.returncode == 130, stderr
    assert seconds < 30, completed.stdout
    assert report["outcome"] == "stopped"
    assert read_json(project.runs / run_id / "stop-request.json")["now"] is True
    assert [item for item in project.containers() if item.status == "running"] == []


def test_stop_dead_run_kills_container(project: Project) -> None:
    # A run folder with a free lock, and a container of that run that still runs.
    run_id = f"{project.name}-dead"
    (project.runs / run_id).mkdir(parents=True)
    (project.runs / run_id / "run.lock").write_text("")
    container = project.client.containers.run(
        BASE_IMAGE, ["sleep", "300"], detach=True, network_mode="none", cap_drop=["ALL"], user="1000:1000",
        labels={"orchestrate.run": run_id, "orchestrate.agent": "x", TEST_LABEL: "stop"},
    )
    try:
        dead = _status(project, run_id)
        completed, report = _stop(project, run_id)
        container.reload()
        text = project.orchestrate("stop", run_id, "--runs-dir", str(project.runs))
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    assert dead["state"] == "dead"
    assert dead["agents"][0]["container_state"] == "running"
    assert completed.returncode == 0, completed.stderr
    assert report["outcome"] == "stopped"
    assert report["killed_containers"] == [container.id]
    assert container.status == "exited"
    assert any(f"orchestrate cleanup {run_id}" in message for message in report["messages"])
    assert text.returncode == 0, text.stderr
    assert f"orchestrate cleanup {run_id}" in text.stdout


def test_stop_unknown_run_exits_2(project: Project) -> None:
    completed = project.orchestrate("stop", f"{project.name}-absent", "--runs-dir", str(project.runs))

    assert completed.returncode == 2
    assert str(project.runs) in completed.stderr
    assert "orchestrate status" in completed.stderr


def test_stop_invalid_run_id_exits_2(project: Project) -> None:
    completed = project.orchestrate("stop", "../etc", "--runs-dir", str(project.runs))

    assert completed.returncode == 2
    assert "invalid run id" in completed.stderr
