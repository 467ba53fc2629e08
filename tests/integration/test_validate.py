"""`orchestrate validate` against a live run, and against a weakened container made outside orchestrate."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from .conftest import BASE_IMAGE, TEST_LABEL, Project

EVERY_CHECK = {
    ("network mode", "inspect"), ("attached networks", "inspect"), ("capabilities", "inspect"),
    ("privileged", "inspect"), ("no-new-privileges", "inspect"), ("seccomp", "inspect"), ("user", "inspect"),
    ("read-only root", "inspect"), ("mounts", "inspect"), ("sensitive mounts", "inspect"),
    ("memory limit", "inspect"), ("swap", "inspect"), ("pids limit", "inspect"), ("cpu limit", "inspect"),
    ("runtime", "inspect"), ("interfaces", "/proc"), ("routes", "/proc"), ("network namespace", "/proc"),
    ("capabilities", "/proc"), ("no-new-privileges", "/proc"), ("seccomp", "/proc"), ("user", "/proc"),
    ("read-only root", "/proc"), ("mounts", "/proc"), ("sensitive mounts", "/proc"), ("memory limit", "cgroup"),
    ("pids limit", "cgroup"), ("cpu limit", "cgroup"), ("every setting as planned", "plan"),
}


@pytest.fixture
def live_run(project: Project) -> Iterator[tuple[subprocess.Popen[str], str]]:
    manifest = project.manifest([{"name": "sleeper", "command": ["sleep", "60"]}])
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--no-live")
    try:
        (container,) = project.wait_for_running(1)
        yield process, container.labels["orchestrate.run"]
    finally:
        process.terminate()
        process.communicate(timeout=60)


def validate_json(project: Project, *args: str) -> tuple[int, dict[str, Any]]:
    completed = project.orchestrate("validate", *args, "--runs-dir", str(project.runs), "--json")
    try:
        return completed.returncode, json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"validate printed no JSON (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")


def test_live_run_passes_every_check(project: Project, live_run: tuple[subprocess.Popen[str], str]) -> None:
    process, run_id = live_run

    code, report = validate_json(project, run_id)

    assert code == 0, json.dumps(report, indent=2)
    (container,) = report["containers"]
    assert container["agent"] == "sleeper"
    assert container["plan"] is not None
    assert {(check["check"], check["source"]) for check in container["checks"]} == EVERY_CHECK
    assert [check for check in container["checks"] if check["status"] != "pass"] == []
    # Nothing ran inside the container, so the run's monitor saw no tampering and the run goes on.
    assert process.poll() is None


def test_live_run_text_has_line_per_check(project: Project, live_run: tuple[subprocess.Popen[str], str]) -> None:
    _process, run_id = live_run

    completed = project.orchestrate("validate", run_id, "--runs-dir", str(project.runs))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [line for line in completed.stdout.splitlines() if line.endswith(" pass")]
    assert len(rows) == len(EVERY_CHECK)
    assert "every check passed" in completed.stdout


@pytest.fixture
def weakened_container(docker_client: docker.DockerClient) -> Iterator[str]:
    """A container labelled as an agent of a run that has no folder, with NET_RAW added and no hardening."""
    run_id = f"t-fake-{secrets.token_hex(4)}"
    container = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "60"], detach=True, cap_add=["NET_RAW"], user="1000:1000",
        labels={"orchestrate.run": run_id, "orchestrate.agent": "x", TEST_LABEL: "validate"},
    )
    try:
        yield run_id
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_weakened_container_fails(project: Project, weakened_container: str) -> None:
    code, report = validate_json(project, weakened_container)

    assert code == 1
    (container,) = report["containers"]
    assert container["plan"] is None
    failed = {(check["check"], check["source"]) for check in container["checks"] if check["status"] == "fail"}
    assert {
        ("capabilities", "inspect"), ("capabilities", "/proc"), ("network mode", "inspect"),
        ("attached networks", "inspect"), ("interfaces", "/proc"), ("routes", "/proc"),
        ("no-new-privileges", "inspect"), ("no-new-privileges", "/proc"), ("read-only root", "inspect"),
        ("read-only root", "/proc"), ("memory limit", "inspect"), ("pids limit", "cgroup"),
    } <= failed
    capabilities = next(check for check in container["checks"]
                        if check["check"] == "capabilities" and check["source"] == "/proc")
    assert "net_raw" in capabilities["actual"]


def test_weakened_container_named_in_text(project: Project, weakened_container: str) -> None:
    completed = project.orchestrate("validate", weakened_container, "--runs-dir", str(project.runs))

    assert completed.returncode == 1
    assert "FAILED: x: attached networks (inspect)" in completed.stdout


def test_malformed_run_id_exits_2(project: Project) -> None:
    completed = project.orchestrate("validate", "../etc", "--runs-dir", str(project.runs))

    assert completed.returncode == 2
    assert "invalid run id" in completed.stderr


def test_unknown_run_exits_2(project: Project) -> None:
    completed = project.orchestrate("validate", f"t-none-{secrets.token_hex(4)}", "--runs-dir", str(project.runs))

    assert completed.returncode == 2
    assert "is unknown" in completed.stderr


def test_finished_run_has_nothing_to_check(project: Project) -> None:
    manifest = project.manifest([{"name": "quick", "command": ["true"]}])
    code, result = project.run_json(manifest)
    assert code == 0

    completed = project.orchestrate("validate", result["run_id"], "--runs-dir", str(project.runs))

    assert completed.returncode == 1
    assert "has no running container" in completed.stderr
