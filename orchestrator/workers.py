"""Worker threads for blocking runtime calls, in four pools so none can starve another.

Creates have a pool of their own, so a burst of them cannot hold the threads
that start the containers already created. Other control calls (attach,
start, inspect) share one limiter. Calls that block until a container exits
get their own, sized to the number of agents, and can be abandoned on
cancellation. Shutdown has capacity reserved for itself, so a stop never
queues behind thirty threads that wait for agents to exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

CONTROL_THREADS = 32
# Many creates at once are slow. A pool of their own keeps them from taking every control thread while
# created agents wait to be started.
CREATE_THREADS = 32
SHUTDOWN_THREADS = 16


class Workers:
    def __init__(self, agent_count: int) -> None:
        self.control = anyio.CapacityLimiter(CONTROL_THREADS)
        self.creating = anyio.CapacityLimiter(CREATE_THREADS)
        self.waiting = anyio.CapacityLimiter(max(agent_count, 1) * 2 + 2)
        # A SIGKILL call returns only when its container has exited, so each agent may need a thread during a
        # stop. With fewer threads the kills of a large run go out in waves.
        self.shutdown = anyio.CapacityLimiter(max(SHUTDOWN_THREADS, agent_count + 4))

    async def call(self, function: Callable[..., T], *args: object) -> T:
        """Run a short blocking call; cancellation waits for it to return."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self.control)

    async def create_call(self, function: Callable[..., T], *args: object) -> T:
        """Run a container create; cancellation waits for it to return, so its id is never lost."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self.creating)

    async def block(self, function: Callable[..., T], *args: object) -> T:
        """Run a call that blocks until something happens; cancellation abandons the thread."""
        return await anyio.to_thread.run_sync(
            function, *args, limiter=self.waiting, abandon_on_cancel=True
        )

    async def stop_call(self, function: Callable[..., T], *args: object) -> T:
        """Run a shutdown step on the reserved pool."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self.shutdown)

    async def stop_block(self, function: Callable[..., T], *args: object) -> T:
        """Block on the reserved pool; cancellation abandons the thread."""
        return await anyio.to_thread.run_sync(
            function, *args, limiter=self.shutdown, abandon_on_cancel=True
        )
