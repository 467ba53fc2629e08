"""The stop algorithm against a scripted runtime whose calls time out, fail or never see an exit."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from orchestrator import shutdown
from orchestrator.runtime import ExitStatus
from orchestrator.runtime.docker import RuntimeFailure
from orchestrator.shutdown import stop_all, stop_container
from orchestrator.workers import Workers


class ScriptedRuntime:
    """Containers that ignore SIGTERM; SIGKILL ends them after `kill_delay`; calls can be made to fail."""

    def __init__(self, *, kill_delay: float = 0.0, failing_status: int = 0, term_fails: bool = False,
                 wait_fails: bool = False, call_seconds: float = 0.0) -> None:
        self.kill_delay = kill_delay
        self.failing_status = failing_status
        self.term_fails = term_fails
        self.wait_fails = wait_fails
        self.call_seconds = call_seconds
        self.killed_at: dict[str, float] = {}
        self.signals: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def signal(self, container_id: str, name: str) -> None:
        time.sleep(self.call_seconds)
        with self.lock:
            self.signals.append((container_id, name))
        if name == "SIGTERM" and self.term_fails:
            raise RuntimeFailure("signal: the request to the Docker engine timed out")
        if name == "SIGKILL":
            self.killed_at.setdefault(container_id, time.monotonic())

    def _running(self, container_id: str) -> bool:
        killed = self.killed_at.get(container_id)
        return killed is None or time.monotonic() < killed + self.kill_delay

    def status(self, container_id: str) -> ExitStatus:
        with self.lock:
            if self.failing_status:
                self.failing_status -= 1
                raise RuntimeFailure("inspect: the request to the Docker engine timed out")
        running = self._running(container_id)
        return ExitStatus(exit_code=137 if not running else 0, oom_killed=False, running=running)

    def wait(self, container_id: str) -> None:
        if self.wait_fails:
            raise RuntimeFailure("wait: read timed out")
        while self._running(container_id):
            time.sleep(0.01)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


def stop(runtime: ScriptedRuntime, *, grace: float, container_id: str = "c1") -> shutdown.StopOutcome:
    async def main() -> shutdown.StopOutcome:
        return await stop_container(runtime, Workers(1), container_id, grace=grace, force=anyio.Event())  # type: ignore[arg-type]

    return anyio.run(main)


def test_stop_kills_after_grace() -> None:
    runtime = ScriptedRuntime()
    outcome = stop(runtime, grace=0.3)
    assert outcome.stopped and outcome.killed
    assert 0.3 <= outcome.seconds < 1.5
    assert [name for _id, name in runtime.signals] == ["SIGTERM", "SIGKILL"]


def test_stop_failed_sigterm_kills() -> None:
    runtime = ScriptedRuntime(term_fails=True)
    outcome = stop(runtime, grace=5)
    assert outcome.stopped and outcome.killed
    assert outcome.seconds < 1


def test_stop_wait_timeout_is_no_exit() -> None:
    runtime = ScriptedRuntime(wait_fails=True)
    outcome = stop(runtime, grace=0.2)
    assert outcome.killed, "a client timeout of the wait must not count as the container's exit"


def test_client_errors_while_confirming_mean_another_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "KILL_RETRY_INTERVAL", 0.01)
    runtime = ScriptedRuntime(failing_status=3)
    outcome = stop(runtime, grace=0)
    assert outcome.stopped
    assert [name for _id, name in runtime.signals].count("SIGKILL") == 4


def test_stop_never_reports_live_container_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "KILL_CONFIRM_SECONDS", 0.5)
    monkeypatch.setattr(shutdown, "KILL_RETRY_INTERVAL", 0.05)
    runtime = ScriptedRuntime(kill_delay=3600)
    outcome = stop(runtime, grace=0)
    assert not outcome.stopped
    assert outcome.error == "still running after SIGKILL"


def test_thirty_containers_stop_in_parallel() -> None:
    runtime = ScriptedRuntime(call_seconds=0.1)
    ids = [f"c{index}" for index in range(30)]

    async def main() -> list[shutdown.StopOutcome]:
        return await stop_all(runtime, Workers(30), ids, grace=0.2, force=anyio.Event())  # type: ignore[arg-type]

    started = time.monotonic()
    outcomes = anyio.run(main)
    assert all(item.stopped for item in outcomes) and len(outcomes) == 30
    # One after another this would take 30 x (0.1 + 0.2 + 0.1) s; the reserved pool runs 16 at once.
    assert time.monotonic() - started < 3


def test_busy_waiting_threads_leave_room_for_the_stop() -> None:
    # Every waiting thread is busy with a blocking wait, yet the stop still gets threads at once.
    release = threading.Event()
    runtime = ScriptedRuntime()
    workers = Workers(30)

    async def main() -> float:
        async with anyio.create_task_group() as group:
            for _ in range(workers.waiting.total_tokens):  # every waiting thread is taken
                group.start_soon(workers.block, release.wait)
            await anyio.sleep(0.2)
            started = time.monotonic()
            outcome = await stop_container(runtime, workers, "c1", grace=0, force=anyio.Event())  # type: ignore[arg-type]
            seconds = time.monotonic() - started
            assert outcome.stopped
            release.set()
        return seconds

    assert anyio.run(main) < 1
