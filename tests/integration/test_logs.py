"""`orchestrate logs`: following a live agent, and reading a finished run's saved output."""

from __future__ import annotations

import subprocess
import time

from .conftest import ORCHESTRATE, Project, _clean_environment


def test_logs_follow_a_running_agent_and_end_with_it(project: Project) -> None:
    manifest = project.manifest([
        {"name": "talker", "command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 1; done"]},
    ])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs))
    container = project.wait_for_running(1)[0]
    run_id = container.labels["orchestrate.run"]
    started = time.monotonic()
    followed = subprocess.run([*ORCHESTRATE, "logs", run_id, "talker", "-f", "--runs-dir", str(project.runs)],
                              capture_output=True, text=True, timeout=60, env=_clean_environment())
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    # It ended with the agent (about 3 s), not at some client timeout.
    assert time.monotonic() - started < 15
    assert run.wait(timeout=60) == 0

    # After the run the container is gone, and the output saved in the run folder is printed.
    saved = project.orchestrate("logs", run_id, "--runs-dir", str(project.runs))
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    unknown = project.orchestrate("logs", run_id, "nobody", "--runs-dir", str(project.runs))
    assert unknown.returncode == 2
    assert "its agents are: talker" in unknown.stderr
