"""`orchestrate stop` without Docker: the PID record, the stop request, the decision and the signal path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator import stopping
from orchestrator.errors import InputError
from orchestrator.runtime import ExitStatus, Runtime
from orchestrator.status import RUN_LOCK, RunLock, parse_holder_pid, read_holder_pid
from orchestrator.stopping import (
    STOP_REQUEST,
    RunFacts,
    decide,
    stop,
    stop_request,
    write_stop_request,
)

REPOSITORY = Path(__file__).resolve().parents[2]


class FakeRuntime:
    """The part of the runtime that `orchestrate stop` uses, with containers that die on SIGKILL."""

    def __init__(self, containers: dict[str, dict[str, str]]) -> None:
        # container id -> labels; every container starts running.
        self.labels = containers
        self.running = set(containers)
        self.signals: list[tuple[str, str]] = []

    def list_labelled(self, labels: dict[str, str | None]) -> list[str]:
        ((key, value),) = labels.items()
        return [cid for cid, own in self.labels.items() if key in own and (value is None or own[key] == value)]

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"Config": {"Labels": self.labels[container_id]}, "State": {"Running": container_id in self.running}}

    def signal(self, container_id: str, name: str) -> None:
        self.signals.append((container_id, name))
        if name == "SIGKILL":
            self.running.discard(container_id)

    def status(self, container_id: str) -> ExitStatus:
        running = container_id in self.running
        return ExitStatus(exit_code=0 if running else 137, oom_killed=False, running=running)


def connect_to(runtime: FakeRuntime) -> Any:
    def connect() -> Runtime:
        return runtime  # type: ignore[return-value]

    return connect


def no_engine() -> Runtime:
    raise AssertionError("stopping a live run must not need the engine")


def run_labels(run_id: str, agent: str = "a") -> dict[str, str]:
    return {"orchestrate.run": run_id, "orchestrate.agent": agent}


# The PID record in run.lock


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4242\n", 4242), (" 17 ", 17), ("", None), ("\n", None), ("0", None), ("-5", None), ("12abc", None),
     ("abc", None), ("\u0661\u0662", None), ("1.5", None)],
)
def test_holder_pid_parsing(text: str, expected: int | None) -> None:
    assert parse_holder_pid(text) == expected


def test_run_lock_records_own_pid(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)

    assert read_holder_pid(tmp_path) == os.getpid()
    lock.release()
    assert read_holder_pid(tmp_path) is None


def test_run_lock_replaces_longer_stale_pid(tmp_path: Path) -> None:
    (tmp_path / RUN_LOCK).write_text("99999999999999 left by a dead run\n")

    lock = RunLock(tmp_path)
    recorded = (tmp_path / RUN_LOCK).read_text()
    lock.release()

    assert recorded == f"{os.getpid()}\n"


def test_holder_pid_missing_or_garbled(tmp_path: Path) -> None:
    assert read_holder_pid(tmp_path) is None
    (tmp_path / RUN_LOCK).write_bytes(b"\xff\xfe garbage")
    assert read_holder_pid(tmp_path) is None


# The stop request


def test_stop_request_fields() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))

    record = stop_request(now=True, by_pid=321, user="ada", requested_at=moment)

    assert record == {"requested_at": "2024-05-06T05:08:09.123456Z", "by_pid": 321, "user": "ada", "now": True}


def test_stop_request_written_atomically(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    path = write_stop_request(tmp_path, now=False)

    record = json.loads(path.read_text())
    assert path == tmp_path / STOP_REQUEST
    assert record["by_pid"] == os.getpid()
    assert record["now"] is False
    assert record["user"]
    requested = datetime.strptime(record["requested_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert requested >= before.replace(microsecond=0)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(item.name for item in tmp_path.iterdir()) == [STOP_REQUEST]


def test_stop_request_replaces_earlier_one(tmp_path: Path) -> None:
    write_stop_request(tmp_path, now=False)
    write_stop_request(tmp_path, now=True)

    assert json.loads((tmp_path / STOP_REQUEST).read_text())["now"] is True


# The decision


@pytest.mark.parametrize(
    ("facts", "action"),
    [
        (RunFacts(folder_exists=True, lock_held=True, pid=10), "signal"),
        (RunFacts(folder_exists=True, lock_held=True, pid=10, containers=2, running=2), "signal"),
        (RunFacts(folder_exists=True, lock_held=False, pid=None, containers=2, running=1), "kill-containers"),
        (RunFacts(folder_exists=False, lock_held=False, pid=None, containers=1, running=1), "kill-containers"),
        (RunFacts(folder_exists=True, lock_held=True, pid=None, containers=1, running=1), "kill-containers"),
        (RunFacts(folder_exists=True, lock_held=True, pid=None, containers=0, running=0), "no-pid"),
        (RunFacts(folder_exists=True, lock_held=False, pid=None, containers=0, running=0), "nothing"),
        (RunFacts(folder_exists=True, lock_held=False, pid=None, containers=3, running=0), "nothing"),
        (RunFacts(folder_exists=False, lock_held=False, pid=None, containers=1, running=0), "nothing"),
        (RunFacts(folder_exists=False, lock_held=False, pid=None, containers=0, running=0), "unknown"),
    ],
)
def test_decision_per_run_state(facts: RunFacts, action: str) -> None:
    assert decide(facts) == action


def test_decision_needs_containers_without_pid() -> None:
    with pytest.raises(ValueError):
        decide(RunFacts(folder_exists=True, lock_held=False, pid=None))


# The flow, with a fake engine and real processes


def test_stop_rejects_invalid_run_id(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="invalid run id"):
        stop(no_engine, tmp_path, "../etc", now=False, wait_seconds=1)


def test_stop_unknown_run_names_runs_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        stop(connect_to(FakeRuntime({})), tmp_path, "run-x", now=False, wait_seconds=1)

    assert str(tmp_path / "run-x") in str(caught.value)
    assert "orchestrate status" in str(caught.value)


def test_stop_finished_run_reports_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "run-done"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"exit_code": 1}))

    (report,) = stop(connect_to(FakeRuntime({})), tmp_path, "run-done", now=False, wait_seconds=1)

    assert report.outcome == "not-running"
    assert report.run_exit_code == 1
    assert not (folder / STOP_REQUEST).exists()


def test_stop_dead_run_kills_its_containers(tmp_path: Path) -> None:
    (tmp_path / "run-dead").mkdir()
    runtime = FakeRuntime({"c1": run_labels("run-dead"), "c2": run_labels("run-other")})

    (report,) = stop(connect_to(runtime), tmp_path, "run-dead", now=False, wait_seconds=1)

    assert report.outcome == "stopped"
    assert report.killed == ["c1"]
    assert runtime.running == {"c2"}
    assert any("orchestrate cleanup run-dead" in message for message in report.messages)
    assert (tmp_path / "run-dead" / STOP_REQUEST).is_file()


def test_stop_never_signals_pid_of_free_lock(tmp_path: Path) -> None:
    # A dead run's run.lock still names a PID that now belongs to an unrelated process.
    folder = tmp_path / "run-dead"
    folder.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / RUN_LOCK).write_text(f"{bystander.pid}\n")

        (report,) = stop(connect_to(FakeRuntime({})), tmp_path, "run-dead", now=False, wait_seconds=1)

        assert report.outcome == "not-running"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_never_signals_pid_without_lock_open(tmp_path: Path) -> None:
    # The lock is held, but the recorded PID is a process that does not have run.lock open, as with an
    # orchestrate in another PID namespace.
    folder = tmp_path / "run-live"
    folder.mkdir()
    lock = RunLock(folder)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / RUN_LOCK).write_text(f"{bystander.pid}\n")

        (report,) = stop(connect_to(FakeRuntime({})), tmp_path, "run-live", now=False, wait_seconds=1)

        assert report.outcome == "not-stopped"
        assert "records no PID" in report.messages[0]
        assert bystander.poll() is None
    finally:
        lock.release()
        bystander.kill()
        bystander.wait()


HOLDER = textwrap.dedent(
    """
    import json, signal, sys, time
    from pathlib import Path
    from orchestrator.status import RunLock

    folder = Path(sys.argv[1])
    ignore_first = sys.argv[2] == "ignore-first"
    received = []

    def on_term(number, frame):
        received.append(number)
        if ignore_first and len(received) == 1:
            return
        (folder / "result.json").write_text(json.dumps({"exit_code": 130, "signals": len(received)}))
        lock.release()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    lock = RunLock(folder)
    print("holding", flush=True)
    time.sleep(60)
    """
)


def start_holder(folder: Path, mode: str) -> subprocess.Popen[str]:
    """Start a process that holds the run lock like `orchestrate run` and writes result.json on SIGTERM."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True, env=environment
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "holding\n"
    return process


def test_stop_signals_lock_holder(tmp_path: Path) -> None:
    folder = tmp_path / "run-live"
    folder.mkdir()
    holder = start_holder(folder, "exit-on-first")
    try:
        (report,) = stop(no_engine, tmp_path, "run-live", now=False, wait_seconds=10)

        assert holder.wait(timeout=10) == 0
        assert report.outcome == "stopped"
        assert report.pid == holder.pid
        assert report.run_exit_code == 130
        assert json.loads((folder / STOP_REQUEST).read_text())["now"] is False
    finally:
        holder.kill()
        holder.wait()


def test_stop_now_signals_twice(tmp_path: Path) -> None:
    folder = tmp_path / "run-live"
    folder.mkdir()
    holder = start_holder(folder, "ignore-first")
    try:
        (report,) = stop(no_engine, tmp_path, "run-live", now=True, wait_seconds=10)

        assert holder.wait(timeout=10) == 0
        assert report.outcome == "stopped"
        assert json.loads((folder / "result.json").read_text())["signals"] == 2
    finally:
        holder.kill()
        holder.wait()


def test_stop_kills_containers_after_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The holder ignores the one SIGTERM it gets, so the wait runs out and the engine kills the agent.
    monkeypatch.setattr(stopping, "END_AFTER_KILL_SECONDS", 0.2)
    folder = tmp_path / "run-live"
    folder.mkdir()
    holder = start_holder(folder, "ignore-first")
    runtime = FakeRuntime({"c1": run_labels("run-live")})
    try:
        started = time.monotonic()
        (report,) = stop(connect_to(runtime), tmp_path, "run-live", now=False, wait_seconds=0.3)

        assert time.monotonic() - started < 5
        assert report.killed == ["c1"]
        assert runtime.signals == [("c1", "SIGKILL")]
        assert report.outcome == "not-stopped"
        assert any("still running" in message for message in report.messages)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_stop_all_covers_active_and_dead(tmp_path: Path) -> None:
    live = tmp_path / "run-live"
    live.mkdir()
    (tmp_path / "run-dead").mkdir()
    (tmp_path / "run-done").mkdir()
    holder = start_holder(live, "exit-on-first")
    runtime = FakeRuntime(
        {"c1": run_labels("run-dead"), "c2": run_labels("run-live"), "c3": run_labels("run-elsewhere")}
    )
    runtime.running.discard("c2")
    try:
        reports = {report.run_id: report for report in stop(connect_to(runtime), tmp_path, None, now=False,
                                                             wait_seconds=10)}

        assert holder.wait(timeout=10) == 0
        assert sorted(reports) == ["run-dead", "run-elsewhere", "run-live"]
        assert reports["run-live"].outcome == "stopped"
        assert reports["run-dead"].outcome == "stopped"
        assert runtime.signals == [("c1", "SIGKILL")]
    finally:
        holder.kill()
        holder.wait()


def test_stop_all_leaves_run_without_folder(tmp_path: Path) -> None:
    # A run with no folder here may be live in another runs folder, such as a parallel CI job's.
    runtime = FakeRuntime({"c1": run_labels("run-elsewhere")})

    (report,) = stop(connect_to(runtime), tmp_path, None, now=False, wait_seconds=1)

    assert report.outcome == "skipped"
    assert report.ok is True
    assert runtime.running == {"c1"}
    assert runtime.signals == []


def test_stop_named_run_without_folder_kills(tmp_path: Path) -> None:
    runtime = FakeRuntime({"c1": run_labels("run-elsewhere")})

    (report,) = stop(connect_to(runtime), tmp_path, "run-elsewhere", now=False, wait_seconds=1)

    assert report.outcome == "stopped"
    assert runtime.running == set()
    assert not (tmp_path / "run-elsewhere").exists()
