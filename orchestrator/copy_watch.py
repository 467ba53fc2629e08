"""Watch agents' source copies while they run: which files each agent changed, and overlaps between agents.

A file counts as changed when its content differs from the starting point (its blob id differs from the one
recorded when the copies were made), or when it was deleted. Rewriting a file with equal content, or
reverting it, is no change. As soon as two agents have changed the same path, the monitor reports a
`write-conflict`, whose policy decides what happens, so the overlap shows while the agents still run rather
than at merge time. Paths inside `.git` folders never count: the walk skips them.

Each copy is walked every COPY_SCAN_INTERVAL seconds in a worker thread. Only files whose inode, size,
times or mode changed since the last walk are read again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from .copy_tree import item_blob_id, stat_key, walk
from .layout import SOURCE_TARGET
from .plan import RunPlan
from .source_copy import load_baseline
from .violations import WRITE_CONFLICT, Violation

log = logging.getLogger(__name__)

# NOTE: polling bounds the detection time at about this interval plus one walk; a copy of hundreds of
# thousands of files takes longer to walk, and inotify on the copies would be faster.
COPY_SCAN_INTERVAL = 1.0
# Stands for a FIFO, socket or device in a copy: never equal to a starting blob id.
SPECIAL = "special"

Report = Callable[[Violation], None]
StatKey = tuple[int, int, int, int, int]


class CopyState:
    """What the watch knows of one agent's copy: every entry's stat key and blob id, and the changed paths."""

    def __init__(self, agent: str, root: Path) -> None:
        self.agent = agent
        self.root = root
        self.known: dict[str, tuple[StatKey, str]] = {}
        self.changed: set[str] = set()

    def rescan(self, baseline: dict[str, str]) -> set[str]:
        """Walk the copy, update what is known, and return the paths that now differ from the baseline."""
        known = self.known

        def unread(path: str, info: os.stat_result) -> bool:
            previous = known.get(path)
            return previous is None or previous[0] != stat_key(info)

        current: dict[str, tuple[StatKey, str]] = {}
        for item in walk(self.root, want_data=unread):
            if item.kind == "other":
                blob = SPECIAL
            elif item.kind == "file" and item.fd is None:
                blob = known[item.path][1]
            else:
                blob = item_blob_id(item)
            current[item.path] = (stat_key(item.info), blob)
        self.known = current
        changed = {path for path, (_key, blob) in current.items() if baseline.get(path) != blob}
        changed.update(path for path in baseline if path not in current)
        return changed


class CopyWatch:
    """Reports a write-conflict as soon as two agents' copies differ from the start at the same path."""

    def __init__(self, plan: RunPlan, *, report: Report, interval: float = COPY_SCAN_INTERVAL) -> None:
        self.plan = plan
        self._report = report
        self.interval = interval
        self.states = [CopyState(agent.name, agent.source_copy) for agent in plan.agents
                       if agent.source_copy is not None]
        self._baseline: dict[str, str] = {}
        self._reported: set[str] = set()
        self._stopped: set[str] = set()

    def stopping(self, agent: str) -> None:
        """Stop judging an agent's copy: it no longer runs, though its changes still count for the others."""
        self._stopped.add(agent)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self.states:
            task_status.started()
            return
        await self.load()
        await self.scan_all()
        task_status.started()
        while True:
            await anyio.sleep(self.interval)
            await self.scan_all()

    async def load(self) -> None:
        """Read the blob ids recorded when the copies were made."""
        self._baseline = await anyio.to_thread.run_sync(load_baseline, self.plan.run_dir)

    async def scan_all(self) -> None:
        for state in self.states:
            if state.agent in self._stopped:
                continue
            try:
                changed = await anyio.to_thread.run_sync(state.rescan, self._baseline)
            except OSError as exc:
                log.warning("agent %s: its source copy %s could not be read: %s", state.agent, state.root, exc)
                continue
            state.changed = changed
            self._judge(state)

    def changes(self) -> dict[str, set[str]]:
        """Return the paths each agent has changed in its copy, as of the last walk."""
        return {state.agent: set(state.changed) for state in self.states}

    def _judge(self, state: CopyState) -> None:
        for other in self.states:
            if other is state:
                continue
            for path in sorted(state.changed & other.changed):
                if path in self._reported:
                    continue
                self._reported.add(path)
                self._report(Violation(
                    WRITE_CONFLICT, state.agent, f"{SOURCE_TARGET}/{path}",
                    f"changed {path} in its source copy, which agent {other.agent} has changed too; "
                    "merging both will conflict",
                    {"path": path, "other_agent": other.agent, "source_copy": True},
                ))
