"""`orchestrate status`: the runs in a runs folder, and whether each is active, finished or dead.

A live run holds an exclusive flock on `runs/<run-id>/run.lock` for as long as its
orchestrate process lives. The kernel releases the lock when the process dies,
SIGKILL included. So a run folder without result.json whose lock is free belongs to a
run that died, and any container still labelled with its id is a leftover.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import LABEL_AGENT, LABEL_RUN

RUN_LOCK = "run.lock"


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str  # active, finished or dead
    agents: int
    containers: int
    running: int
    exit_code: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "state": self.state,
            "agents": self.agents,
            "containers": self.containers,
            "running": self.running,
            "exit_code": self.exit_code,
        }


class RunLock:
    """The flock a live run holds on its run folder's run.lock."""

    def __init__(self, run_dir: Path) -> None:
        self._fd = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        os.close(self._fd)


def is_active(run_dir: Path) -> bool:
    """Return whether a live orchestrate process holds the run's lock."""
    try:
        fd = os.open(run_dir / RUN_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def run_statuses(runs_root: Path, containers: list[dict[str, Any]]) -> list[RunStatus]:
    """Describe every run folder under `runs_root`, and every run that only containers still name."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for item in containers:
        run_id = (item.get("Labels") or {}).get(LABEL_RUN)
        if run_id and (item.get("Labels") or {}).get(LABEL_AGENT):
            by_run.setdefault(run_id, []).append(item)

    folders = sorted(path for path in runs_root.iterdir() if path.is_dir()) if runs_root.is_dir() else []
    statuses = [_folder_status(folder, by_run.pop(folder.name, [])) for folder in folders]
    for run_id, items in sorted(by_run.items()):
        running = sum(item.get("State") == "running" for item in items)
        statuses.append(RunStatus(run_id, "unknown folder", 0, len(items), running, None))
    return statuses


def _folder_status(folder: Path, containers: list[dict[str, Any]]) -> RunStatus:
    running = sum(item.get("State") == "running" for item in containers)
    agents = _agent_count(folder)
    exit_code = None
    if is_active(folder):
        state = "active"
    elif (folder / "result.json").is_file():
        state = "finished"
        exit_code = _exit_code(folder)
    else:
        state = "dead"
    return RunStatus(folder.name, state, agents, len(containers), running, exit_code)


def _agent_count(folder: Path) -> int:
    try:
        return len(json.loads((folder / "plan.json").read_text(encoding="utf-8")).get("agents", []))
    except (OSError, ValueError, AttributeError):
        return 0


def _exit_code(folder: Path) -> int | None:
    try:
        code = json.loads((folder / "result.json").read_text(encoding="utf-8")).get("exit_code")
    except (OSError, ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None
