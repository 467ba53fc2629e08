"""Watch every agent workspace while agents run: inotify events plus periodic reconciliation scans.

Events alone are not enough: the kernel's queue overflows
under a flood and the watch budget is shared with the user's editor. So a
full scan of each workspace runs every `rescan_interval` seconds, at once
after an overflow and after a folder is moved, and a workspace that cannot
get a watch is polled instead. Both paths feed the same per-entry judgement,
so what inotify misses a scan finds.

Every path is opened one component at a time from the workspace's own
descriptor with O_NOFOLLOW, and each watch is added through /proc/self/fd
after its folder was opened that way. So an agent that swaps a folder for a
symlink cannot make the monitor read, watch or report anything outside its
workspace.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio

from .activity import Activity, Listener
from .file_rules import ClaimMap, Entry, escape_problem
from .inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
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
from .results import printable
from .symlinks import DIRECTORY_FLAGS, reader_under
from .violations import ESCAPE_ATTEMPT, MONITOR_FAILURE, QUOTA_EXCEEDED, Violation

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
# A scan slower than this cannot keep the monitor's promise of seeing violations within seconds.
SCAN_BUDGET = 30.0
# Deeper folders are a violation of their own: the publisher refuses them and a scan stops there.
MAX_DEPTH = 64
# Folders a scan walks before it stops; more is a quota violation, since files alone are counted otherwise.
MAX_FOLDERS = 100_000

Report = Callable[[Violation], None]
PublishReady = Callable[[str, set[str]], None]


@dataclass
class WorkspaceState:
    agent: AgentPlan
    root_fd: int = -1
    entries: dict[str, Entry] = field(default_factory=dict)
    polling: bool = False
    files: int = 0
    bytes: int = 0
    last_event: str = ""
    quota_reported: bool = False
    # The paths of the workspace's symlinks, so a new link can find the older ones it may redirect.
    links: set[str] = field(default_factory=set)

    def put(self, entry: Entry) -> None:
        self.drop(entry.path)
        self.entries[entry.path] = entry
        if stat.S_ISLNK(entry.mode):
            self.links.add(entry.path)
        if not entry.is_dir:
            self.files += 1
        if entry.is_regular:
            self.bytes += entry.size

    def drop(self, path: str) -> Entry | None:
        old = self.entries.pop(path, None)
        self.links.discard(path)
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


@dataclass
class _Listing:
    """The result of one walk, handed from a worker thread to the event loop to be judged there."""

    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[tuple[str, OSError]] = field(default_factory=list)
    too_deep: str | None = None
    too_many_folders: bool = False
    watch_failure: str | None = None


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
        # Written by scans in worker threads and read by the event loop, so changes hold the lock.
        self._watches: dict[int, _Watch] = {}
        self._watch_lock = threading.Lock()
        self._inotify: Inotify | None = None
        self._rescan_now = anyio.Event()
        self._rescan_agents: set[str] = set()
        self.scans = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; the first scan and every watch are in place before `started`."""
        try:
            self._inotify = Inotify()
        except OSError as exc:
            self._degrade_all(f"inotify is not available ({exc.strerror}); every workspace is polled")
        try:
            for state in self.states.values():
                state.root_fd = os.open(state.agent.workspace, DIRECTORY_FLAGS)
                self._scan(state)
            async with anyio.create_task_group() as group:
                task_status.started()
                if self._inotify is not None:
                    group.start_soon(self._read_events)
                group.start_soon(self._rescan_loop)
                group.start_soon(self._poll_loop)
        finally:
            if self._inotify is not None:
                self._inotify.close()
            for state in self.states.values():
                if state.root_fd >= 0:
                    os.close(state.root_fd)
                    state.root_fd = -1

    def request_rescan(self, agent: str | None = None) -> None:
        """Scan one workspace (or all) soon, in a worker thread."""
        self._rescan_agents.update([agent] if agent is not None else self.states)
        self._rescan_now.set()

    async def scan_agent(self, agent: str) -> None:
        """Scan one workspace now, so a write just before the agent's exit is judged too."""
        state = self.states[agent]
        if state.root_fd >= 0:
            await self._timed_scan(state)

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
        # Each path touched in this batch maps to whether it was closed after writing or moved into place.
        touched: dict[tuple[str, str], bool] = {}
        moved: set[str] = set()
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                self._overflow()
                continue
            watch = self._watches.get(event.wd)
            if watch is None:
                continue
            if event.mask & IN_IGNORED:
                with self._watch_lock:
                    self._watches.pop(event.wd, None)
                continue
            if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                continue
            name = os.fsdecode(event.name)
            path = posixpath.join(watch.folder, name) if watch.folder else name
            key = (watch.agent, path)
            if event.mask & IN_ISDIR and event.mask & (IN_MOVED_FROM | IN_MOVED_TO):
                # A moved folder renames everything below it, and the watches below keep their old names:
                # a scan in a worker thread renames them and judges every entry again.
                moved.add(watch.agent)
                continue
            if event.mask & IN_ISDIR and event.mask & IN_CREATE:
                if watch.agent not in moved:
                    self._scan(self.states[watch.agent], path)
                continue
            # A delete or move-out is checked again too: with an exchange (renameat2), another entry
            # takes the name in the same batch.
            offered = bool(event.mask & (IN_CLOSE_WRITE | IN_MOVED_TO))
            touched[key] = touched.get(key, False) or offered

        closed: dict[str, set[str]] = {}
        for (agent, path), ready in touched.items():
            if agent in moved:
                continue
            state = self.states[agent]
            entry = self._lstat(state, path)
            if entry is None:
                state.drop(path)
                continue
            state.put(entry)
            state.last_event = f"wrote {path}"
            if self._judge(state, entry) and ready and entry.is_regular:
                closed.setdefault(agent, set()).add(path)
        for agent in moved:
            self.request_rescan(agent)
        for state in self.states.values():
            self._check_quota(state)
        if self._publish_ready is not None:
            for agent, paths in closed.items():
                self._publish_ready(agent, paths)

    def _overflow(self) -> None:
        message = "the kernel's inotify queue overflowed; every workspace is scanned again now"
        log.warning(message)
        self._listener(Activity("warning", None, message, {"monitor": "degraded"}))
        self.request_rescan()

    # -- scans -------------------------------------------------------------------------------------------

    async def _rescan_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.rescan_interval) as timer:
                await self._rescan_now.wait()
            self._rescan_now = anyio.Event()
            agents = set(self.states) if timer.cancelled_caught else self._rescan_agents
            self._rescan_agents = set()
            for name in sorted(agents):
                state = self.states[name]
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
        listing = await anyio.to_thread.run_sync(self._list, state, "")
        self._apply_listing(state, listing, "")
        seconds = time.monotonic() - started
        if seconds > SCAN_BUDGET:
            self._violation(state, MONITOR_FAILURE, "", f"a scan of the workspace took {seconds:.1f} s, longer than "
                            f"{SCAN_BUDGET:.0f} s; the monitor cannot keep up with this agent")

    def _scan(self, state: WorkspaceState, below: str = "") -> None:
        """Walk the workspace (or one folder of it) on the event loop, add watches, and judge every entry."""
        self._apply_listing(state, self._list(state, below), below)

    def _list(self, state: WorkspaceState, below: str) -> _Listing:
        # May run in a worker thread: it only reads the file system and adds watches, and judges nothing.
        listing = _Listing()
        listing.entries = dict(self._walk(state, below, listing))
        return listing

    def _apply_listing(self, state: WorkspaceState, listing: _Listing, below: str) -> None:
        self.scans += 1
        if listing.watch_failure is not None and not state.polling:
            self._degrade(state, listing.watch_failure)
        for folder, exc in listing.problems:
            self._unreadable(state, folder, exc)
        if listing.too_deep is not None:
            self._violation(state, QUOTA_EXCEEDED, listing.too_deep,
                            f"folders nested deeper than {MAX_DEPTH} levels, which the monitor does not follow")
        if listing.too_many_folders:
            self._violation(state, QUOTA_EXCEEDED, "", f"more than {MAX_FOLDERS} folders")
        prefix = below + "/" if below else ""
        for path in [path for path in state.entries if path.startswith(prefix) and path not in listing.entries]:
            state.drop(path)
        for path, entry in listing.entries.items():
            if state.entries.get(path) != entry:
                state.put(entry)
                self._judge(state, entry)
        self._check_quota(state)

    def _walk(self, state: WorkspaceState, below: str, listing: _Listing) -> Iterator[tuple[str, Entry]]:
        file_limit = state.agent.publish_limits.max_files + 1
        files = folders = 0
        pending = [below]
        while pending:
            folder = pending.pop()
            try:
                fd = _open_folder(state.root_fd, folder)
            except OSError as exc:
                listing.problems.append((folder, exc))
                continue
            try:
                if not state.polling:
                    self._add_watch(state, folder, fd, listing)
                try:
                    names = os.listdir(fd)
                except OSError as exc:
                    listing.problems.append((folder, exc))
                    continue
                for name in names:
                    path = posixpath.join(folder, name) if folder else name
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
                    except OSError:
                        continue  # Gone between the listing and the stat.
                    yield path, Entry.from_stat(path, info, target)
                    if not stat.S_ISDIR(info.st_mode):
                        files += 1
                        if files >= file_limit:
                            return  # Over the file limit: the quota check reports it; more entries change nothing.
                        continue
                    folders += 1
                    if folders > MAX_FOLDERS:
                        listing.too_many_folders = True
                        return
                    if path.count("/") + 1 >= MAX_DEPTH:
                        listing.too_deep = listing.too_deep or path
                    else:
                        pending.append(path)
            finally:
                os.close(fd)

    def _add_watch(self, state: WorkspaceState, folder: str, fd: int, listing: _Listing) -> None:
        if self._inotify is None or listing.watch_failure is not None:
            return
        try:
            if self._max_watches is not None and len(self._watches) >= self._max_watches:
                raise WatchLimitReached(errno.ENOSPC, "the test's watch limit is reached")
            wd = self._inotify.add_watch(f"/proc/self/fd/{fd}".encode())
        except WatchLimitReached:
            listing.watch_failure = "the kernel's inotify watch limit is reached"
            return
        except OSError as exc:
            listing.watch_failure = f"a watch could not be added ({exc.strerror})"
            return
        # The same folder gets the same descriptor again, so a moved folder's watch takes its new name here.
        with self._watch_lock:
            self._watches[wd] = _Watch(state.agent.name, folder)

    def _degrade(self, state: WorkspaceState, reason: str) -> None:
        state.polling = True
        with self._watch_lock:
            dropped = [wd for wd, watch in self._watches.items() if watch.agent == state.agent.name]
            for wd in dropped:
                del self._watches[wd]
        if self._inotify is not None:
            for wd in dropped:
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
        # A folder removed during the walk is no problem, nor is a folder that became a symlink: that
        # link is judged as an entry of its own.
        if folder and exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            self._violation(state, ESCAPE_ATTEMPT, folder,
                            f"cannot be read by the monitor ({exc.strerror}); an agent may be hiding files")

    def _lstat(self, state: WorkspaceState, path: str) -> Entry | None:
        folder, _, name = path.rpartition("/")
        try:
            fd = _open_folder(state.root_fd, folder)
        except OSError:
            return None
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            return None
        finally:
            os.close(fd)
        return Entry.from_stat(path, info, target)

    # -- judgement ---------------------------------------------------------------------------------------

    def _judge(self, state: WorkspaceState, entry: Entry) -> bool:
        """Report what is wrong with an entry; return True when it may be published."""
        agent = state.agent.name
        problem = escape_problem(entry, reader_under(state.root_fd))
        if stat.S_ISLNK(entry.mode):
            # A new link can turn an older one into an escape (`L -> d/d/../..` made first, `d -> .` after),
            # so every link whose target names this one as a component is judged again.
            self._rejudge_links_through(state, entry.path.rsplit("/", 1)[-1], entry.path)
        if problem is not None:
            self._violation(state, ESCAPE_ATTEMPT, entry.path, problem, mode=f"{stat.S_IMODE(entry.mode):04o}",
                            target=entry.target, nlink=entry.nlink)
            return False
        if entry.is_dir or stat.S_ISLNK(entry.mode):
            return False
        first = self._writers.get(entry.path)
        finding = self.claims.judge_write(agent, entry.path, first)
        if finding is not None:
            self._violation(state, finding.kind, entry.path, finding.detail, first_writer=first, size=entry.size)
            return False
        # Only a write that broke no rule makes its agent the path's first writer: an intruder that writes a
        # claimed path first must not turn the claim's owner into the culprit.
        self._writers.setdefault(entry.path, agent)
        return self.claims.shared_mode(entry.path) != "append"

    def _rejudge_links_through(self, state: WorkspaceState, name: str, changed: str) -> None:
        readlink = reader_under(state.root_fd)
        for path in list(state.links):
            other = state.entries.get(path)
            if other is None or other.path == changed or name not in (other.target or "").split("/"):
                continue
            problem = escape_problem(other, readlink)
            if problem is not None:
                self._violation(state, ESCAPE_ATTEMPT, other.path, f"{problem} (through the link {changed})",
                                target=other.target)

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
        state.last_event = f"{kind} {printable(subject)}".strip()
        self._report(Violation(kind, state.agent.name, subject, detail,
                               {name: value for name, value in evidence.items() if value is not None}))


def _open_folder(root_fd: int, folder: str) -> int:
    """Open `folder` below `root_fd` one component at a time, never following a symlink."""
    fd = os.dup(root_fd)
    for name in folder.split("/") if folder else ():
        try:
            child = os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd
