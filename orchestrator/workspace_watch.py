"""Watch every agent workspace while agents run: inotify events plus periodic reconciliation scans.

Events alone are not enough (field report M1): the kernel's queue overflows
under a flood and the watch budget is shared with the user's editor. So a
full scan of each workspace runs every `rescan_interval` seconds and at once
after an overflow, and a workspace that cannot get a watch is polled instead.
Both paths feed the same per-entry judgement, so what inotify misses a scan
finds.

Each folder is opened with O_NOFOLLOW before its watch is added through
/proc/self/fd, so an agent that swaps a folder for a symlink cannot make the
monitor watch a folder outside its workspace.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio

from .activity import Activity, Listener
from .file_rules import ClaimMap, Entry, escape_problem
from .inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
    RawEvent,
    WatchLimitReached,
)
from .plan import AgentPlan, RunPlan
from .publish.fsops import DIRECTORY_FLAGS
from .violations import ESCAPE_ATTEMPT, MONITOR_FAILURE, QUOTA_EXCEEDED, Violation

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
# A scan slower than this cannot keep the monitor's promise of seeing violations within seconds.
SCAN_BUDGET = 30.0
MAX_DEPTH = 64
# A file that a scan finds (no close event seen) is published once it has not changed for this long.
QUIET_SECONDS = 2.0

Report = Callable[[Violation], None]
PublishReady = Callable[[str, set[str]], None]


@dataclass
class WorkspaceState:
    agent: AgentPlan
    entries: dict[str, Entry] = field(default_factory=dict)
    polling: bool = False
    files: int = 0
    bytes: int = 0
    last_event: str = ""
    quota_reported: bool = False

    def put(self, entry: Entry) -> None:
        self.drop(entry.path)
        self.entries[entry.path] = entry
        if not entry.is_dir:
            self.files += 1
        if entry.is_regular:
            self.bytes += entry.size

    def drop(self, path: str) -> Entry | None:
        old = self.entries.pop(path, None)
        if old is not None:
            if not old.is_dir:
                self.files -= 1
            if old.is_regular:
                self.bytes -= old.size
        return old


@dataclass(frozen=True)
class _Watch:
    agent: str
    folder: str


class FileMonitor:
    """Judges every file an agent writes, as it writes it, and reports violations."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        report: Report,
        listener: Listener,
        publish_ready: PublishReady | None = None,
        rescan_interval: float | None = None,
        max_watches: int | None = None,
    ) -> None:
        self.plan = plan
        self._report = report
        self._listener = listener
        self._publish_ready = publish_ready
        self.rescan_interval = rescan_interval if rescan_interval is not None else plan.monitor.rescan_interval
        # Lowers the watch budget below the kernel's, so tests can reach the limit without changing sysctls.
        self._max_watches = max_watches
        self.claims = ClaimMap.of(plan)
        self.states = {agent.name: WorkspaceState(agent) for agent in plan.agents}
        self._writers: dict[str, str] = {}
        self._reported: set[tuple[str, str, str]] = set()
        self._watches: dict[int, _Watch] = {}
        self._inotify: Inotify | None = None
        self._rescan_now = anyio.Event()
        self.scans = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; the first scan and every watch are in place before `started`."""
        try:
            self._inotify = Inotify()
        except OSError as exc:
            self._degrade_all(f"inotify is not available ({exc.strerror}); every workspace is polled")
        for state in self.states.values():
            self._scan(state)
        try:
            async with anyio.create_task_group() as group:
                task_status.started()
                if self._inotify is not None:
                    group.start_soon(self._read_events)
                group.start_soon(self._rescan_loop)
                group.start_soon(self._poll_loop)
        finally:
            if self._inotify is not None:
                self._inotify.close()

    def request_rescan(self) -> None:
        self._rescan_now.set()

    def final_scan(self) -> None:
        """Scan every workspace once more, so a write just before the exit is judged too."""
        for state in self.states.values():
            self._scan(state)

    # -- inotify -----------------------------------------------------------------------------------------

    async def _read_events(self) -> None:
        assert self._inotify is not None
        fd = self._inotify.fileno()
        while True:
            await anyio.wait_readable(fd)
            events = self._inotify.read()
            if events:
                self._handle(events)

    def _handle(self, events: list[RawEvent]) -> None:
        touched: dict[tuple[str, str], bool] = {}
        rescan: set[str] = set()
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                self._overflow()
                continue
            watch = self._watches.get(event.wd)
            if watch is None:
                continue
            if event.mask & IN_IGNORED:
                del self._watches[event.wd]
                continue
            if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                continue
            name = os.fsdecode(event.name)
            path = posixpath.join(watch.folder, name) if watch.folder else name
            state = self.states[watch.agent]
            if event.mask & IN_ISDIR and event.mask & (IN_MOVED_FROM | IN_MOVED_TO):
                # A moved folder renames everything below it; a scan is simpler than patching each entry.
                rescan.add(watch.agent)
                continue
            if event.mask & (IN_DELETE | IN_MOVED_FROM):
                state.drop(path)
                touched.pop((watch.agent, path), None)
                continue
            if event.mask & IN_ISDIR and event.mask & IN_CREATE:
                self._scan(state, path)
                continue
            key = (watch.agent, path)
            touched[key] = touched.get(key, False) or bool(event.mask & IN_CLOSE_WRITE)

        closed: dict[str, set[str]] = {}
        for (agent, path), was_closed in touched.items():
            if agent in rescan:
                continue
            state = self.states[agent]
            entry = self._lstat(state, path)
            if entry is None:
                state.drop(path)
                continue
            state.put(entry)
            state.last_event = f"wrote {path}"
            if self._judge(state, entry) and was_closed and entry.is_regular:
                closed.setdefault(agent, set()).add(path)
        for agent in rescan:
            self._scan(self.states[agent])
        for state in self.states.values():
            self._check_quota(state)
        if self._publish_ready is not None:
            for agent, paths in closed.items():
                self._publish_ready(agent, paths)

    def _overflow(self) -> None:
        message = "the kernel's inotify queue overflowed; every workspace is scanned again now"
        log.warning(message)
        self._listener(Activity("warning", None, message, {"monitor": "degraded"}))
        self._rescan_now.set()

    # -- scans -------------------------------------------------------------------------------------------

    async def _rescan_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.rescan_interval):
                await self._rescan_now.wait()
            self._rescan_now = anyio.Event()
            for state in self.states.values():
                if not state.polling:
                    await self._timed_scan(state)

    async def _poll_loop(self) -> None:
        while True:
            await anyio.sleep(POLL_INTERVAL)
            for state in self.states.values():
                if state.polling:
                    await self._timed_scan(state)

    async def _timed_scan(self, state: WorkspaceState) -> None:
        started = time.monotonic()
        await anyio.to_thread.run_sync(self._scan_listing_only, state)
        seconds = time.monotonic() - started
        if seconds > SCAN_BUDGET:
            self._violation(state, MONITOR_FAILURE, "", f"a scan of the workspace took {seconds:.1f} s, longer than "
                            f"{SCAN_BUDGET:.0f} s; the monitor cannot keep up with this agent")

    def _scan_listing_only(self, state: WorkspaceState) -> None:
        # Runs in a worker thread: only the listing; judging happens back on the event loop.
        problems: list[tuple[str, OSError]] = []
        listing = dict(self._walk(state, "", problems, add_watches=False))
        anyio.from_thread.run_sync(self._apply_listing, state, listing, "", problems)

    def _scan(self, state: WorkspaceState, below: str = "") -> None:
        """Walk the workspace (or one folder of it), add watches, and judge every entry."""
        problems: list[tuple[str, OSError]] = []
        listing = dict(self._walk(state, below, problems, add_watches=not state.polling))
        self._apply_listing(state, listing, below, problems)

    def _apply_listing(
        self, state: WorkspaceState, listing: dict[str, Entry], below: str, problems: list[tuple[str, OSError]]
    ) -> None:
        self.scans += 1
        for folder, exc in problems:
            self._unreadable(state, folder, exc)
        prefix = below + "/" if below else ""
        for path in [path for path in state.entries if path.startswith(prefix) and path not in listing]:
            state.drop(path)
        quiet_since = time.time() - QUIET_SECONDS
        ready = set()
        for path, entry in listing.items():
            if state.entries.get(path) != entry:
                state.put(entry)
                # A file a scan finds may still be open; one left alone for a while is taken as written.
                if self._judge(state, entry) and entry.is_regular and entry.mtime < quiet_since:
                    ready.add(path)
        self._check_quota(state)
        if ready and self._publish_ready is not None:
            self._publish_ready(state.agent.name, ready)

    def _walk(
        self, state: WorkspaceState, below: str, problems: list[tuple[str, OSError]], *, add_watches: bool
    ) -> Iterator[tuple[str, Entry]]:
        root = state.agent.workspace
        limit = state.agent.publish_limits.max_files + 1
        count = 0
        pending = [below]
        while pending:
            folder = pending.pop()
            try:
                fd = os.open(root / folder if folder else root, DIRECTORY_FLAGS)
            except OSError as exc:
                problems.append((folder, exc))
                continue
            try:
                if add_watches:
                    self._add_watch(state, folder, fd)
                try:
                    names = os.listdir(fd)
                except OSError as exc:
                    problems.append((folder, exc))
                    continue
                for name in names:
                    path = posixpath.join(folder, name) if folder else name
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
                    except OSError:
                        continue  # Gone between the listing and the stat.
                    count += 1
                    yield path, Entry.from_stat(path, info, target)
                    if stat.S_ISDIR(info.st_mode) and path.count("/") < MAX_DEPTH:
                        pending.append(path)
                    if count >= limit:
                        return  # Over the file limit: the quota check reports it; more entries change nothing.
            finally:
                os.close(fd)

    def _add_watch(self, state: WorkspaceState, folder: str, fd: int) -> None:
        if self._inotify is None or state.polling:
            return
        try:
            if self._max_watches is not None and len(self._watches) >= self._max_watches:
                raise WatchLimitReached(28, "the test's watch limit is reached")
            wd = self._inotify.add_watch(f"/proc/self/fd/{fd}".encode())
        except WatchLimitReached:
            self._degrade(state, "the kernel's inotify watch limit is reached")
            return
        except OSError as exc:
            self._degrade(state, f"a watch could not be added ({exc.strerror})")
            return
        self._watches[wd] = _Watch(state.agent.name, folder)

    def _degrade(self, state: WorkspaceState, reason: str) -> None:
        state.polling = True
        for wd in [wd for wd, watch in self._watches.items() if watch.agent == state.agent.name]:
            del self._watches[wd]
            if self._inotify is not None:
                self._inotify.remove_watch(wd)
        message = (f"{reason}; the workspace of agent {state.agent.name} is polled every {POLL_INTERVAL:.0f} s "
                   "instead (raise fs.inotify.max_user_watches to watch it again)")
        log.warning(message)
        self._listener(Activity("warning", state.agent.name, message, {"monitor": "polling"}))

    def _degrade_all(self, reason: str) -> None:
        for state in self.states.values():
            state.polling = True
        log.warning(reason)
        self._listener(Activity("warning", None, reason, {"monitor": "polling"}))

    def _unreadable(self, state: WorkspaceState, folder: str, exc: OSError) -> None:
        if folder and exc.errno != errno.ENOENT:  # A folder removed during the walk is no problem.
            self._violation(state, ESCAPE_ATTEMPT, folder,
                            f"cannot be read by the monitor ({exc.strerror}); an agent may be hiding files")

    def _lstat(self, state: WorkspaceState, path: str) -> Entry | None:
        full = state.agent.workspace / path
        try:
            info = os.lstat(full)
            target = os.readlink(full) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            return None
        return Entry.from_stat(path, info, target)

    # -- judgement ---------------------------------------------------------------------------------------

    def _judge(self, state: WorkspaceState, entry: Entry) -> bool:
        """Report what is wrong with an entry; return True when it may be published."""
        agent = state.agent.name
        problem = escape_problem(entry)
        if problem is not None:
            self._violation(state, ESCAPE_ATTEMPT, entry.path, problem, mode=f"{stat.S_IMODE(entry.mode):04o}",
                            target=entry.target, nlink=entry.nlink)
            return False
        if entry.is_dir or stat.S_ISLNK(entry.mode):
            return False
        first = self._writers.setdefault(entry.path, agent)
        finding = self.claims.judge_write(agent, entry.path, first)
        if finding is not None:
            self._violation(state, finding.kind, entry.path, finding.detail, first_writer=first, size=entry.size)
            return False
        return self.claims.shared_mode(entry.path) != "append"

    def _check_quota(self, state: WorkspaceState) -> None:
        limits = state.agent.publish_limits
        if state.quota_reported:
            return
        if state.files > limits.max_files:
            detail = f"{state.files} files, over the limit of {limits.max_files} (limits.max_files)"
        elif state.bytes > limits.max_total_bytes:
            detail = f"{state.bytes} bytes, over the limit of {limits.max_total_bytes} (limits.max_total_bytes)"
        else:
            return
        state.quota_reported = True
        self._violation(state, QUOTA_EXCEEDED, "", detail, files=state.files, bytes=state.bytes)

    def _violation(self, state: WorkspaceState, kind: str, subject: str, detail: str, **evidence: object) -> None:
        key = (kind, state.agent.name, subject)
        if key in self._reported:
            return
        self._reported.add(key)
        state.last_event = f"{kind} {subject}".strip()
        self._report(Violation(kind, state.agent.name, subject, detail,
                               {name: value for name, value in evidence.items() if value is not None}))

