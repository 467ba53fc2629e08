"""Watch agents' source copies while they run: which files each agent changed, and overlaps between agents.

A file counts as changed when its content, executable bit or type (file or link) differs from the starting
point recorded when the copies were made, or when it was deleted. Rewriting a file with equal content, or
reverting it, is no change. As soon as two agents have changed the same path, the monitor reports a
`write-conflict`, whose policy decides what happens, so the overlap shows while the agents still run rather
than at merge time. Paths inside `.git` folders never count: the walk skips them.

Every folder of a copy (outside `.git`) carries an inotify watch, added through the descriptor the walk
opened with O_NOFOLLOW. Any event in a copy walks that copy again after a short quiet time. A walk reads
only the files whose inode, size, times or mode changed since the last walk, or whose ctime was within
RACY_WINDOW_NS of it. A walk of every copy also runs every
COPY_SCAN_INTERVAL seconds, which catches what inotify missed: a queue overflow, the watch limit, a moved
folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from .copy_tree import Baseline, content_key, item_blob_id, stat_key, walk
from .inotify import IN_IGNORED, IN_Q_OVERFLOW, Inotify, WatchLimitReached
from .layout import SOURCE_TARGET
from .plan import RunPlan
from .source_copy import load_baseline
from .violations import WRITE_CONFLICT, Violation

log = logging.getLogger(__name__)

COPY_SCAN_INTERVAL = 1.0
# Watches for all copies together. The kernel's budget is shared with the workspace monitor and the user's
# editor, so an agent that makes a million folders must not spend it; past this, copies are only walked.
MAX_COPY_WATCHES = 20_000
# Quiet time after an event before the copy is walked, so a burst of writes costs one walk.
EVENT_DEBOUNCE = 0.02
# A file whose ctime is this close to the walk is read again on the next walk, whatever its stat key. Kernels
# before 6.13 (which added multigrain timestamps) stamp times at timer-tick granularity, 1 to 10 ms, and some
# file systems at 1 or 2 s. So a same-size rewrite right after a read can keep every stat field, which git
# calls racily clean.
# NOTE: this compares the file's ctime with this machine's clock, so on a network file system whose server
# clock runs behind by more than the window such a rewrite can still go unseen.
RACY_WINDOW_NS = 2_000_000_000
# Stands for a FIFO, socket or device in a copy: never equal to a starting blob id.
SPECIAL = "special"
# Stands for a file whose size differs from its starting size, or that did not exist at the start.
RESIZED = "resized"

Report = Callable[[Violation], None]
StatKey = tuple[int, int, int, int, int]
OnFolder = Callable[[str, int], None]


class CopyState:
    """The state of one agent's copy as of its last walk: each entry's stat key and blob id, and the changed paths."""

    def __init__(self, agent: str, root: Path) -> None:
        self.agent = agent
        self.root = root
        self.known: dict[str, tuple[StatKey, str]] = {}
        # Paths read while their ctime was recent, so an unchanged stat key does not prove unchanged content.
        self.racy: set[str] = set()
        self.changed: set[str] = set()

    def rescan(self, baseline: Baseline, on_folder: OnFolder | None = None) -> set[str]:
        """Walk the copy, update what is known, and return the paths that now differ from the baseline.

        Only files of their starting size are read: any other size cannot be the starting content. So an
        agent's new or grown files, such as a sparse file of a terabyte, cost a stat, not a read.
        """
        known = self.known
        racy = self.racy
        sizes = baseline.sizes
        # Entries whose last change is this recent may change again within the same timestamp tick.
        recent = time.time_ns() - RACY_WINDOW_NS

        def unread(path: str, info: os.stat_result) -> bool:
            if sizes.get(path) != info.st_size:
                return False
            previous = known.get(path)
            return previous is None or previous[0] != stat_key(info) or path in racy

        current: dict[str, tuple[StatKey, str]] = {}
        now_racy: set[str] = set()
        for item in walk(self.root, want_data=unread, on_folder=on_folder):
            if item.kind == "other":
                blob = SPECIAL
            elif item.kind == "link":
                blob = content_key(item, item_blob_id(item))
            elif sizes.get(item.path) != item.info.st_size:
                # Checked again on the opened file, which may have grown since its lstat.
                blob = RESIZED
            elif item.fd is None:
                blob = known[item.path][1]
            else:
                blob = content_key(item, item_blob_id(item))
            current[item.path] = (stat_key(item.info), blob)
            if item.info.st_ctime_ns >= recent:
                now_racy.add(item.path)
        self.known = current
        self.racy = now_racy
        changed = {path for path, (_key, blob) in current.items() if baseline.blobs.get(path) != blob}
        changed.update(path for path in baseline.blobs if path not in current)
        return changed


class CopyWatch:
    """The watch over every agent's copy, which reports a write-conflict when two copies change one path."""

    def __init__(self, plan: RunPlan, *, report: Report, interval: float = COPY_SCAN_INTERVAL) -> None:
        self.plan = plan
        self._report = report
        self.interval = interval
        self.states = {agent.name: CopyState(agent.name, agent.source_copy) for agent in plan.agents
                       if agent.source_copy is not None}
        self._baseline = Baseline()
        self._reported: set[str] = set()
        self._stopped: set[str] = set()
        self._closing: set[str] = set()
        self._inotify: Inotify | None = None
        # Watch descriptor to agent; written by walks in worker threads, so changes hold the lock.
        self._watches: dict[int, str] = {}
        self._watch_lock = threading.Lock()
        self._watch_limit_reached = False
        self._dirty: set[str] = set()
        self._wakeup = anyio.Event()
        self._scan_lock = anyio.Lock()

    def stopping(self, agent: str) -> None:
        """Walk an agent's copy once more, then no longer: it stops, though its changes still count for others."""
        if agent not in self.states:
            return
        self._closing.add(agent)
        self._dirty.add(agent)
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self.states:
            task_status.started()
            return
        try:
            self._inotify = Inotify()
        except OSError as exc:
            log.warning("inotify is not available for the source copies (%s); they are walked every %g s",
                        exc.strerror, self.interval)
        try:
            await self.load()
            await self.scan_all()
            async with anyio.create_task_group() as group:
                task_status.started()
                if self._inotify is not None:
                    group.start_soon(self._read_events)
                    group.start_soon(self._scan_dirty)
                while True:
                    await anyio.sleep(self.interval)
                    await self.scan_all()
        finally:
            if self._inotify is not None:
                self._inotify.close()

    async def load(self) -> None:
        """Read the blob ids recorded when the copies were made."""
        self._baseline = await anyio.to_thread.run_sync(load_baseline, self.plan.run_dir)

    async def scan_all(self) -> None:
        for agent in list(self.states):
            await self.scan(agent)

    async def scan(self, agent: str) -> None:
        """Walk one agent's copy now and report any path another agent has changed too."""
        state = self.states[agent]
        if agent in self._stopped:
            return
        if agent in self._closing:
            self._stopped.add(agent)
        async with self._scan_lock:
            try:
                changed = await anyio.to_thread.run_sync(state.rescan, self._baseline, self._watcher(agent))
            except OSError as exc:
                log.warning("agent %s: its source copy %s could not be read: %s", agent, state.root, exc)
                return
        state.changed = changed
        self._judge(state)

    def changes(self) -> dict[str, set[str]]:
        """Return the paths each agent has changed in its copy, as of the last walk."""
        return {state.agent: set(state.changed) for state in self.states.values()}

    # -- inotify -------------------------------------------------------------------------------------------

    def _watcher(self, agent: str) -> OnFolder | None:
        inotify = self._inotify
        if inotify is None or self._watch_limit_reached:
            return None

        def watch(_folder: str, fd: int) -> None:
            if self._watch_limit_reached:
                return
            try:
                if len(self._watches) >= MAX_COPY_WATCHES:
                    raise WatchLimitReached(0, f"more than {MAX_COPY_WATCHES} folders in the source copies")
                wd = inotify.add_watch(f"/proc/self/fd/{fd}".encode())
            except WatchLimitReached as exc:
                self._watch_limit_reached = True
                log.warning("%s; source copies are walked every %g s instead of watched", exc.strerror,
                            self.interval)
                return
            except OSError:
                return  # The folder went away; the next walk finds that.
            with self._watch_lock:
                self._watches[wd] = agent

        return watch

    async def _read_events(self) -> None:
        assert self._inotify is not None
        fd = self._inotify.fileno()
        while True:
            await anyio.wait_readable(fd)
            for event in self._inotify.read():
                if event.mask & IN_Q_OVERFLOW:
                    self._dirty.update(self.states)
                    continue
                with self._watch_lock:
                    agent = self._watches.pop(event.wd, None) if event.mask & IN_IGNORED \
                        else self._watches.get(event.wd)
                if agent is not None and event.name.lower() != b".git":
                    self._dirty.add(agent)
            if self._dirty:
                self._wakeup.set()

    async def _scan_dirty(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            await anyio.sleep(EVENT_DEBOUNCE)
            dirty, self._dirty = self._dirty, set()
            for agent in sorted(dirty):
                await self.scan(agent)

    # -- judgement -----------------------------------------------------------------------------------------

    def _judge(self, state: CopyState) -> None:
        for other in self.states.values():
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
