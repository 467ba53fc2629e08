"""`orchestrate status`: the runs in a runs folder, and whether each is active, finished or dead.

A live run holds an exclusive flock on `runs/<run-id>/run.lock` for as long as its
orchestrate process lives, and writes its PID into that file. The kernel releases
the lock when the process dies, SIGKILL included. So a run folder without
result.json whose lock is free belongs to a run that died, and any container still
labelled with its id is a leftover.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InternalError
from .plan import LABEL_AGENT, LABEL_ROLE, LABEL_RUN

RUN_LOCK = "run.lock"
# Another process holds run.lock only briefly while it checks the lock (is_active takes a shared lock for
# microseconds), so taking it retries for this many seconds before it fails.
LOCK_RETRY_SECONDS = 1.0
LOCK_RETRY_INTERVAL = 0.01


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


@dataclass(frozen=True)
class AgentStatus:
    """One agent of a run, with one of its containers when the engine still has one."""

    agent: str
    container_id: str | None
    # Docker's state of the container (running, exited, created, ...); None when no container is left.
    container_state: str | None
    # The agent's final state from result.json; None until the run has finished.
    state: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "container": self.container_id,
            "container_state": self.container_state,
            "state": self.state,
        }


@dataclass(frozen=True)
class RunDetail:
    """One run with a row per agent, for `orchestrate status RUN`."""

    run_id: str
    state: str  # active, finished, dead or unknown folder
    pid: int | None
    exit_code: int | None
    agents: list[AgentStatus]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "state": self.state,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "agents": [agent.to_json() for agent in self.agents],
        }


class RunLock:
    """The flock a live run holds on its run folder's run.lock; the file contains the holder's PID."""

    def __init__(self, run_dir: Path) -> None:
        self._fd = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _lock_exclusive(self._fd, run_dir)
            # Written only after the lock is taken, so a PID in the file names a process that held the lock.
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(self._fd)
            raise

    def release(self) -> None:
        try:
            # Cleared before the unlock, so a PID left in a free lock file belongs to a process that died.
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)


def _lock_exclusive(fd: int, run_dir: Path) -> None:
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise InternalError(
                    f"the run folder {run_dir} is locked by another orchestrate process "
                    f"(PID {read_holder_pid(run_dir)}), but every run gets a new folder; "
                    "run again with --debug and report this"
                ) from None
        time.sleep(LOCK_RETRY_INTERVAL)


def parse_holder_pid(text: str) -> int | None:
    """Return the PID that run.lock records, or None when the text is empty or not a positive number."""
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        return None
    pid = int(value)
    return pid if pid > 0 else None


def read_holder_pid(run_dir: Path) -> int | None:
    """Return the PID recorded in the run's run.lock, or None when the file is missing or garbled.

    The PID is only meaningful while the lock is held: check `is_active` too, or a
    reused PID of a dead run may name an unrelated process.
    """
    try:
        fd = os.open(run_dir / RUN_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 64)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_holder_pid(data.decode("ascii", errors="replace"))


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


def run_detail(runs_root: Path, run_id: str, containers: list[dict[str, Any]]) -> RunDetail | None:
    """Describe one run agent by agent; return None when neither its folder nor a container exists.

    `containers` are entries of the engine's container list (Id, State, Labels); entries of other runs
    are ignored.
    """
    folder = runs_root / run_id
    own = [item for item in containers if (item.get("Labels") or {}).get(LABEL_RUN) == run_id]
    if not folder.is_dir():
        if not own:
            return None
        return RunDetail(run_id, "unknown folder", None, None, _agent_rows([], {}, own))

    state, exit_code = _run_state(folder)
    pid = read_holder_pid(folder) if state == "active" else None
    return RunDetail(run_id, state, pid, exit_code, _agent_rows(_agent_names(folder), _agent_states(folder), own))


def _agent_rows(
    planned: list[str], final_states: dict[str, str], containers: list[dict[str, Any]]
) -> list[AgentStatus]:
    """Return a row per container of each agent, and a row without container for an agent that has none."""
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for item in containers:
        labels = item.get("Labels") or {}
        # A run's own helper, such as the egress broker, has a role label instead of an agent label.
        role = labels.get(LABEL_ROLE)
        agent = str(labels.get(LABEL_AGENT) or (f"({role})" if role else "-"))
        by_agent.setdefault(agent, []).append(item)

    # The plan's order first; agents that only a container or result.json names follow, sorted.
    names = list(dict.fromkeys(planned))
    names += sorted((set(by_agent) | set(final_states)) - set(names))
    rows = []
    for name in names:
        state = final_states.get(name)
        items = by_agent.get(name, [])
        if not items:
            rows.append(AgentStatus(name, None, None, state))
        for item in items:
            rows.append(AgentStatus(name, str(item.get("Id") or "")[:12], item.get("State"), state))
    return rows


def _folder_status(folder: Path, containers: list[dict[str, Any]]) -> RunStatus:
    running = sum(item.get("State") == "running" for item in containers)
    state, exit_code = _run_state(folder)
    return RunStatus(folder.name, state, len(_agent_names(folder)), len(containers), running, exit_code)


def _run_state(folder: Path) -> tuple[str, int | None]:
    if is_active(folder):
        return "active", None
    if (folder / "result.json").is_file():
        return "finished", read_exit_code(folder)
    return "dead", None


def _agent_names(folder: Path) -> list[str]:
    plan = _read_json(folder / "plan.json")
    agents = plan.get("agents") if isinstance(plan, dict) else None
    if not isinstance(agents, list):
        return []
    return [str(agent.get("name")) if isinstance(agent, dict) else "?" for agent in agents]


def _agent_states(folder: Path) -> dict[str, str]:
    result = _read_json(folder / "result.json")
    agents = result.get("agents") if isinstance(result, dict) else None
    if not isinstance(agents, list):
        return {}
    return {
        str(agent.get("name")): str(agent.get("state"))
        for agent in agents
        if isinstance(agent, dict) and agent.get("name") is not None
    }


def read_exit_code(folder: Path) -> int | None:
    """Return the run's exit code from its result.json, or None when the file is missing or garbled."""
    result = _read_json(folder / "result.json")
    code = result.get("exit_code") if isinstance(result, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
