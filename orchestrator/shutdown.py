"""Stop containers on the orchestrator's own clock: SIGTERM, a grace period, SIGKILL, confirm.

A client-side timeout is no evidence about the container, so a container counts
as stopped only when inspect shows it not running. An error from the engine
during a stop leads to another kill attempt, never to "stopped".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio

from .errors import DockerUnavailable
from .runtime import Runtime
from .runtime.docker import ContainerGone, RuntimeFailure
from .workers import Workers

log = logging.getLogger(__name__)

DEFAULT_GRACE = 3.0
KILL_CONFIRM_SECONDS = 10.0
KILL_RETRY_INTERVAL = 0.25


@dataclass(frozen=True)
class StopOutcome:
    container_id: str
    stopped: bool
    killed: bool
    seconds: float
    error: str | None = None


async def stop_container(
    runtime: Runtime,
    workers: Workers,
    container_id: str,
    *,
    grace: float,
    force: anyio.Event,
) -> StopOutcome:
    """Stop one container: SIGTERM, wait up to `grace` (or until `force` is set), then SIGKILL."""
    started = time.monotonic()
    if grace > 0 and not force.is_set():
        try:
            await workers.stop_call(runtime.signal, container_id, "SIGTERM")
        except ContainerGone:
            return StopOutcome(container_id, stopped=True, killed=False, seconds=time.monotonic() - started)
        except (RuntimeFailure, DockerUnavailable) as exc:
            log.warning("SIGTERM to container %s failed: %s; killing it", container_id[:12], exc)
        else:
            if await _exited_within(runtime, workers, container_id, grace, force):
                return StopOutcome(container_id, stopped=True, killed=False, seconds=time.monotonic() - started)

    return await _kill_and_confirm(runtime, workers, container_id, started)


async def _exited_within(
    runtime: Runtime, workers: Workers, container_id: str, grace: float, force: anyio.Event
) -> bool:
    exited = False

    async with anyio.create_task_group() as group:

        async def wait_for_exit() -> None:
            nonlocal exited
            try:
                await workers.stop_block(runtime.wait, container_id)
                exited = True
            except (ContainerGone, RuntimeFailure, DockerUnavailable):
                pass
            group.cancel_scope.cancel()

        async def wait_for_force() -> None:
            await force.wait()
            group.cancel_scope.cancel()

        group.start_soon(wait_for_exit)
        group.start_soon(wait_for_force)
        with anyio.move_on_after(grace):
            await anyio.sleep_forever()
        group.cancel_scope.cancel()

    return exited


async def _kill_and_confirm(runtime: Runtime, workers: Workers, container_id: str, started: float) -> StopOutcome:
    deadline = started + KILL_CONFIRM_SECONDS
    last_error: str | None = None
    while True:
        try:
            await workers.stop_call(runtime.signal, container_id, "SIGKILL")
            status = await workers.stop_call(runtime.status, container_id)
        except ContainerGone:
            return StopOutcome(container_id, stopped=True, killed=True, seconds=time.monotonic() - started)
        except (RuntimeFailure, DockerUnavailable) as exc:
            last_error = str(exc)
        else:
            if not status.running:
                return StopOutcome(container_id, stopped=True, killed=True, seconds=time.monotonic() - started)

        if time.monotonic() >= deadline:
            log.warning("container %s is still running after SIGKILL: %s", container_id[:12], last_error)
            return StopOutcome(
                container_id, stopped=False, killed=True, seconds=time.monotonic() - started,
                error=last_error or "still running after SIGKILL",
            )
        await anyio.sleep(KILL_RETRY_INTERVAL)


async def stop_all(
    runtime: Runtime, workers: Workers, container_ids: list[str], *, grace: float, force: anyio.Event
) -> list[StopOutcome]:
    """Stop every container in parallel; return one outcome per container."""
    outcomes: list[StopOutcome] = []

    async def stop_one(container_id: str) -> None:
        outcomes.append(await stop_container(runtime, workers, container_id, grace=grace, force=force))

    async with anyio.create_task_group() as group:
        for container_id in container_ids:
            group.start_soon(stop_one, container_id)
    return outcomes
