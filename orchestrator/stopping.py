"""`orchestrate stop`: ask a live run to stop, or kill the containers a dead run left running.

A live run's orchestrate process holds the flock on `runs/<run-id>/run.lock` and
records its PID there. SIGTERM to that process makes its supervisor stop every
agent on its own clock and save their evidence, as Ctrl-C does, and a second
SIGTERM skips the grace period. When no process holds the lock, no process
would save evidence, so the run's running containers are killed through the engine.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio

from .errors import EnvironmentProblem, InputError, OrchestrateError
from .plan import LABEL_AGENT, LABEL_ROLE, LABEL_RUN, RUN_ID_PATTERN
from .runtime import Runtime
from .runtime.docker import ContainerGone, RuntimeFailure
from .shutdown import stop_all
from .status import RUN_LOCK, is_active, read_exit_code, read_holder_pid
from .workers import Workers

log = logging.getLogger(__name__)

STOP_REQUEST = "stop-request.json"
DEFAULT_WAIT_SECONDS = 30.0
# Linux merges a standard signal into an identical one that is still pending, so the second SIGTERM of
# --now waits until the first has been delivered.
SECOND_SIGNAL_DELAY = 0.2
LOCK_POLL_INTERVAL = 0.05
# A run takes its lock a moment before it writes its PID, so a missing PID is read again for this long.
PID_WAIT_SECONDS = 1.0
# How long a run whose containers were killed behind its back gets to save their evidence and end.
END_AFTER_KILL_SECONDS = 10.0

Action = Literal["signal", "kill-containers", "nothing", "no-pid", "unknown"]
Outcome = Literal["stopped", "not-running", "not-stopped", "skipped"]


@dataclass(frozen=True)
class RunFacts:
    """The state of one run as `orchestrate stop` finds it before acting."""

    folder_exists: bool
    lock_held: bool
    # The PID in run.lock, only when the lock is held and that process has the file open.
    pid: int | None
    # The run's containers in any state, and the running ones. None when not listed: a live run with a
    # PID is stopped by a signal and needs no engine.
    containers: int | None = None
    running: int | None = None


def decide(facts: RunFacts) -> Action:
    """Choose how to stop a run: signal its orchestrate process, kill its containers, or nothing."""
    if facts.lock_held and facts.pid is not None:
        return "signal"
    if facts.containers is None or facts.running is None:
        raise ValueError("the run's containers must be listed unless its lock records a PID")
    if facts.running:
        # A dead run, or a live one without a PID to signal: only the engine can stop its agents.
        return "kill-containers"
    if facts.lock_held:
        return "no-pid"
    if facts.folder_exists or facts.containers:
        return "nothing"
    return "unknown"


@dataclass
class StopReport:
    """The outcome of stopping one run.

    `outcome` is "stopped" when nothing of the run runs any more, "not-running"
    when nothing ran, "not-stopped" when a container or the orchestrate process
    may still run, and "skipped" when `--all` left a run of another runs folder alone.
    """

    run_id: str
    outcome: Outcome
    messages: list[str]
    pid: int | None = None
    run_exit_code: int | None = None
    killed: list[str] = field(default_factory=list)
    still_running: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome != "not-stopped"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "outcome": self.outcome,
            "messages": self.messages,
            "pid": self.pid,
            "run_exit_code": self.run_exit_code,
            "killed_containers": self.killed,
            "still_running": self.still_running,
            "seconds": round(self.seconds, 3),
        }


def stop_request(*, now: bool, by_pid: int, user: str, requested_at: datetime) -> dict[str, Any]:
    """Build the record of who asked a run to stop, which the run's supervisor copies into its audit log."""
    return {
        "requested_at": requested_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "by_pid": by_pid,
        "user": user,
        "now": now,
    }


def write_stop_request(run_dir: Path, *, now: bool) -> Path:
    """Write `stop-request.json` into the run folder atomically: a temporary file, then a rename."""
    record = stop_request(now=now, by_pid=os.getpid(), user=_login_name(), requested_at=datetime.now(UTC))
    path = run_dir / STOP_REQUEST
    fd, temporary = tempfile.mkstemp(dir=run_dir, prefix=f".{STOP_REQUEST}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            # Readable by all, because root may stop a run that another user's orchestrate supervises.
            os.fchmod(stream.fileno(), 0o644)
            stream.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No LOGNAME or USER variable and no passwd entry, as in some containers.
        return str(os.getuid())


def check_run_id(run_id: str, runs_root: Path) -> None:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(
            f"invalid run id '{run_id}': a run id has lowercase letters, digits and dashes; "
            f"copy it from the run's summary or from `orchestrate status --runs-dir {runs_root}`"
        )


class Engine:
    """The Docker connection, opened on first use, so signalling a live run works with the engine down."""

    def __init__(self, connect: Callable[[], Runtime]) -> None:
        self._connect = connect
        self._runtime: Runtime | None = None
        self._lock = anyio.Lock()
        self.workers = Workers(1)

    async def runtime(self) -> Runtime:
        async with self._lock:
            if self._runtime is None:
                self._runtime = await anyio.to_thread.run_sync(self._connect)
            return self._runtime

    async def containers(self, run_id: str | None) -> list[RunContainer]:
        runtime = await self.runtime()
        try:
            return await self.workers.stop_call(list_run_containers, runtime, run_id)
        except RuntimeFailure as exc:
            owner = f"run {run_id}" if run_id else "any run"
            raise EnvironmentProblem(f"could not list the containers of {owner}: {exc}; check `docker info`") from exc


@dataclass(frozen=True)
class RunContainer:
    container_id: str
    run_id: str
    agent: str
    running: bool


def list_run_containers(runtime: Runtime, run_id: str | None) -> list[RunContainer]:
    """Return the containers labelled with `run_id`, or with any run id when it is None."""
    found = []
    for container_id in runtime.list_labelled({LABEL_RUN: run_id}):
        try:
            inspect = runtime.inspect(container_id)
        except ContainerGone:
            continue  # Removed between the list and the inspect, by its run or by a cleanup.
        labels = (inspect.get("Config") or {}).get("Labels") or {}
        state = inspect.get("State") or {}
        running = bool(state.get("Running")) or bool(state.get("Restarting"))
        # The egress broker has no agent label; its role names it instead.
        agent = str(labels.get(LABEL_AGENT) or labels.get(LABEL_ROLE) or "")
        found.append(RunContainer(container_id, str(labels.get(LABEL_RUN)), agent, running))
    return found


def stop(
    connect: Callable[[], Runtime], runs_root: Path, run_id: str | None, *, now: bool, wait_seconds: float
) -> list[StopReport]:
    """Stop the run `run_id`, or every run when it is None; `connect` opens the engine when it is needed."""

    async def main() -> list[StopReport]:
        engine = Engine(connect)
        if run_id is None:
            return await stop_every_run(engine, runs_root, now=now, wait_seconds=wait_seconds)
        return [await stop_run(engine, runs_root, run_id, now=now, wait_seconds=wait_seconds)]

    return anyio.run(main)


async def stop_run(engine: Engine, runs_root: Path, run_id: str, *, now: bool, wait_seconds: float) -> StopReport:
    """Stop one run; raise InputError when neither its folder nor a container of it exists."""
    check_run_id(run_id, runs_root)
    return await _stop(engine, runs_root, run_id, now=now, wait_seconds=wait_seconds)


async def stop_every_run(engine: Engine, runs_root: Path, *, now: bool, wait_seconds: float) -> list[StopReport]:
    """Stop every active run in `runs_root` and the running containers of its dead runs, all in parallel.

    A run with running containers but no folder in `runs_root` may be a live run of
    another runs folder, such as a parallel CI job's, so it is reported and left alone.
    """
    folders = _run_folders(runs_root)
    containers = await engine.containers(None)
    running = {item.run_id for item in containers if item.running}
    targets = sorted({name for name, active in folders.items() if active} | (running & set(folders)))
    reports: dict[str, StopReport] = {
        run_id: StopReport(run_id, "skipped", [_elsewhere_sentence(run_id, runs_root)])
        for run_id in running - set(folders)
    }

    async def stop_one(run_id: str) -> None:
        try:
            reports[run_id] = await _stop(engine, runs_root, run_id, now=now, wait_seconds=wait_seconds)
        except OrchestrateError as exc:
            # One run that cannot be stopped must not keep the others running.
            reports[run_id] = StopReport(run_id, "not-stopped", [str(exc)])

    async with anyio.create_task_group() as group:
        for run_id in targets:
            group.start_soon(stop_one, run_id)
    return [reports[run_id] for run_id in sorted(reports)]


def _run_folders(runs_root: Path) -> dict[str, bool]:
    """Map the name of each run folder in `runs_root` to whether its run is active."""
    if not runs_root.is_dir():
        return {}
    return {
        path.name: is_active(path)
        for path in runs_root.iterdir()
        if path.is_dir() and RUN_ID_PATTERN.fullmatch(path.name)
    }


def _elsewhere_sentence(run_id: str, runs_root: Path) -> str:
    return (
        f"run {run_id} has running containers but no folder in {runs_root}, so it may be a live run of another "
        f"runs folder; it was left alone: stop it with `orchestrate stop {run_id} --runs-dir DIR` naming its folder"
    )


async def _stop(
    engine: Engine, runs_root: Path, run_id: str, *, now: bool, wait_seconds: float
) -> StopReport:
    started = time.monotonic()
    folder = runs_root / run_id
    facts = await _gather_facts(engine, run_id, folder)
    action = decide(facts)

    if action == "unknown":
        raise InputError(
            f"run {run_id} is unknown: {runs_root / run_id} does not exist and no container carries its label; "
            f"list the runs with `orchestrate status --runs-dir {runs_root}`, or pass --runs-dir with the "
            "folder that holds the run"
        )
    if action == "no-pid":
        message = (
            f"run {run_id} is active, but its run.lock records no PID of a process that holds the lock (an "
            "orchestrate older than `orchestrate stop`, or one in another PID namespace); press Ctrl-C in its "
            "terminal or send SIGTERM to its process"
        )
        return StopReport(run_id, "not-stopped", [message])
    if action == "nothing":
        exit_code = read_exit_code(folder)
        return StopReport(run_id, "not-running", _nothing_running(run_id, exit_code, facts), run_exit_code=exit_code)

    warning = _record_request(folder, now=now) if facts.folder_exists else None
    if action == "signal" and facts.pid is not None:
        report = await _stop_through_orchestrator(engine, run_id, folder, facts.pid, now=now, wait_seconds=wait_seconds)
    else:
        report = await _stop_without_orchestrator(
            engine, run_id, lock_held=facts.lock_held, folder_exists=facts.folder_exists
        )
    if warning is not None:
        report.messages.insert(0, warning)
    report.seconds = time.monotonic() - started
    return report


async def _gather_facts(engine: Engine, run_id: str, folder: Path) -> RunFacts:
    facts = _local_facts(folder)
    if facts.lock_held and facts.pid is None:
        facts = await _wait_for_pid(folder)
    if facts.lock_held and facts.pid is not None:
        return facts

    containers = await engine.containers(run_id)
    running = sum(item.running for item in containers)
    return RunFacts(facts.folder_exists, facts.lock_held, facts.pid, containers=len(containers), running=running)


def _local_facts(folder: Path) -> RunFacts:
    lock_held = is_active(folder)
    pid = _verified_holder(folder) if lock_held else None
    return RunFacts(folder_exists=folder.is_dir(), lock_held=lock_held, pid=pid)


async def _wait_for_pid(folder: Path) -> RunFacts:
    deadline = time.monotonic() + PID_WAIT_SECONDS
    facts = _local_facts(folder)
    while facts.lock_held and facts.pid is None and time.monotonic() < deadline:
        await anyio.sleep(LOCK_POLL_INTERVAL)
        facts = _local_facts(folder)
    return facts


def _verified_holder(folder: Path) -> int | None:
    """Return the PID in run.lock when that process has the file open, or when /proc cannot tell."""
    pid = read_holder_pid(folder)
    if pid is None or _has_open(pid, folder / RUN_LOCK) is False:
        return None
    return pid


def _has_open(pid: int, path: Path) -> bool | None:
    """Return whether process `pid` has `path` open, or None where /proc cannot tell.

    An orchestrate in another PID namespace, such as a container that shares the
    runs folder, records a PID that names a different process here.
    """
    try:
        target = os.stat(path)
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return None  # Another user's process; os.kill then fails too, unless this is root.
    except FileNotFoundError:
        # Without /proc (macOS) nothing can be checked. With /proc, a missing PID folder means the process is gone.
        return None if not os.path.isdir("/proc/self") else False
    for name in descriptors:
        try:
            opened = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # Closed since the listing.
        if (opened.st_dev, opened.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _nothing_running(run_id: str, exit_code: int | None, facts: RunFacts) -> list[str]:
    if exit_code is not None:
        messages = [f"run {run_id} has already finished with exit code {exit_code}; nothing of it is running"]
    else:
        messages = [
            f"run {run_id} is not running: no orchestrate process holds its lock and none of its containers runs"
        ]
    if facts.containers:
        messages.append(
            f"{facts.containers} stopped container(s) of the run are left; remove them with "
            f"`orchestrate cleanup {run_id}`"
        )
    return messages


def _record_request(folder: Path, *, now: bool) -> str | None:
    """Write the stop request; return a warning instead of failing, because stopping matters more."""
    try:
        write_stop_request(folder, now=now)
    except OSError as exc:
        log.warning("could not write %s: %s; stopping the run anyway", folder / STOP_REQUEST, exc)
        return f"warning: the stop request could not be recorded in {folder / STOP_REQUEST} ({exc})"
    return None


async def _stop_through_orchestrator(
    engine: Engine, run_id: str, folder: Path, pid: int, *, now: bool, wait_seconds: float
) -> StopReport:
    """Send SIGTERM (twice with `now`) to the run's orchestrate process and wait for it to release the lock."""
    messages = []
    if _signal_holder(folder, pid):
        log.debug("sent SIGTERM to orchestrate (PID %d) of run %s", pid, run_id)
        if now:
            await anyio.sleep(SECOND_SIGNAL_DELAY)
            if _signal_holder(folder, pid):
                log.debug("sent SIGTERM again, so run %s kills its agents at once", run_id)
        times = " twice" if now else ""
        messages.append(f"asked run {run_id} to stop: sent SIGTERM{times} to orchestrate (PID {pid})")
    else:
        messages.append(f"run {run_id} ended by itself before the signal was sent")

    if await _wait_for_release(folder, wait_seconds):
        return await _report_ended(engine, run_id, folder, pid, messages)

    # The process lives but did not finish in time, so its agents are killed without it.
    log.debug("orchestrate (PID %d) of run %s did not end within %g s; killing its containers",
                pid, run_id, wait_seconds)
    messages.append(f"orchestrate (PID {pid}) did not end within {wait_seconds:g} s")
    killed, left = await _kill_running(engine, run_id)
    messages.append(_killed_sentence(run_id, killed, left))
    report = StopReport(run_id, "not-stopped", messages, pid=pid, killed=killed, still_running=left)

    if await _wait_for_release(folder, END_AFTER_KILL_SECONDS):
        report.run_exit_code = read_exit_code(folder)
        report.outcome = "not-stopped" if left else "stopped"
        code = "unknown (no result.json)" if report.run_exit_code is None else str(report.run_exit_code)
        messages.append(f"orchestrate (PID {pid}) then ended with exit code {code}")
    else:
        messages.append(
            f"orchestrate (PID {pid}) is still running; check it with `ps -p {pid}` and end it with "
            f"`kill -KILL {pid}` if it hangs"
        )
    return report


async def _report_ended(engine: Engine, run_id: str, folder: Path, pid: int, messages: list[str]) -> StopReport:
    exit_code = read_exit_code(folder)
    if exit_code is not None:
        messages.append(f"run {run_id} ended with exit code {exit_code}")
        return StopReport(run_id, "stopped", messages, pid=pid, run_exit_code=exit_code)

    # The process died without writing its result, so it may have left agents running.
    messages.append(f"orchestrate (PID {pid}) ended without writing {folder / 'result.json'}")
    killed, left = await _kill_running(engine, run_id)
    if killed or left:
        messages.append(_killed_sentence(run_id, killed, left))
    outcome: Outcome = "not-stopped" if left else "stopped"
    return StopReport(run_id, outcome, messages, pid=pid, killed=killed, still_running=left)


async def _stop_without_orchestrator(
    engine: Engine, run_id: str, *, lock_held: bool, folder_exists: bool
) -> StopReport:
    killed, left = await _kill_running(engine, run_id)
    if lock_held:
        lead = f"run {run_id} is active, but its run.lock records no PID to signal, so its containers were killed"
    elif folder_exists:
        lead = f"run {run_id} is dead: no orchestrate process holds its lock"
    else:
        lead = f"run {run_id} has no folder here, so no orchestrate process of it could be asked to stop"
    outcome: Outcome = "not-stopped" if left else "stopped"
    return StopReport(run_id, outcome, [lead, _killed_sentence(run_id, killed, left)], killed=killed,
                      still_running=left)


def _signal_holder(folder: Path, pid: int) -> bool:
    """Send SIGTERM to `pid` only while it holds the run's lock; return whether it was sent.

    Checked right before the signal, so the PID of a run that has ended, which the
    system may have given to an unrelated process since, is never signalled.
    """
    if not is_active(folder) or _verified_holder(folder) != pid:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise EnvironmentProblem(
            f"not permitted to send SIGTERM to orchestrate (PID {pid}) of the run in {folder}: it runs as another "
            "user; run `orchestrate stop` as that user or as root"
        ) from exc
    return True


async def _wait_for_release(folder: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while is_active(folder):
        if time.monotonic() >= deadline:
            return False
        await anyio.sleep(LOCK_POLL_INTERVAL)
    return True


async def _kill_running(engine: Engine, run_id: str) -> tuple[list[str], list[str]]:
    """Kill the run's running containers at once; return the ids killed and the ids still running."""
    containers = await engine.containers(run_id)
    running = [item.container_id for item in containers if item.running]
    if not running:
        return [], []

    log.debug("killing %d running container(s) of run %s", len(running), run_id)
    runtime = await engine.runtime()
    outcomes = await stop_all(runtime, Workers(len(running)), running, grace=0, force=anyio.Event())
    killed = sorted(outcome.container_id for outcome in outcomes if outcome.stopped)
    left = sorted(outcome.container_id for outcome in outcomes if not outcome.stopped)
    return killed, left


def _killed_sentence(run_id: str, killed: list[str], left: list[str]) -> str:
    if left:
        ids = ", ".join(container_id[:12] for container_id in left)
        return (
            f"{len(left)} container(s) of run {run_id} are still running after SIGKILL ({ids}); "
            "check `docker info` and the engine's log"
        )
    if not killed:
        return f"no container of run {run_id} was running"
    return (
        f"killed {len(killed)} running container(s) of run {run_id}; `orchestrate cleanup {run_id}` "
        "removes what is left"
    )
