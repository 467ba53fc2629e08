"""Per-path file locks for the output tree, and naming the process that holds one.

Lock files live in `<output>/.orchestrate/locks/`, a folder that agents never
see (the plan masks it), because flock needs no write permission: anyone who
can open a lock file can hold it forever. Lock files are never deleted, since
flock locks an inode and a deleted and re-created file would let two
processes hold "the same" lock.

Modes are set explicitly, not left to the umask: the folder is group-shared
(setgid, 2775) and lock files are 0664, so CI jobs running as different users
of one group can share an output tree.

Paths map onto a fixed set of lock files by hash (lock striping). A path is
still written only under its lock; two paths that share a stripe merely wait
for each other. Striping keeps a publish of 10,000 new files from creating
10,000 lock files, which costs more than writing the files themselves.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import stat
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from ..errors import OrchestrateError
from .fsops import SHARED_DIRECTORY_MODE

LOCK_FILE_MODE = 0o664
HOLDER_FILE_MODE = 0o664
DEFAULT_LOCK_TIMEOUT = 30.0
LOCK_STRIPES = 1024


class StripeLock(filelock.UnixFileLock):
    """A filelock lock that opens its file without O_TRUNC and without following a symlink.

    filelock's own Unix lock truncates the file at every attempt, which costs a
    journal write per lock on ext4; the lock files here never hold data.
    """

    def _acquire(self) -> None:
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, self._context.mode)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != self._context.mode:
                os.fchmod(fd, self._context.mode)
        except PermissionError:
            pass  # Another user created it; only the owner may change its mode.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            return
        self._context.lock_file_fd = fd


class PublishError(OrchestrateError):
    """Publishing could not proceed; nothing half-written was left in the output tree."""

    exit_code = 1


class LockTimeout(PublishError):
    pass


class LockDenied(PublishError):
    pass


class LockRoom:
    """The lock folder of one output tree, used by one publishing process."""

    def __init__(self, state_dir: Path, *, run_id: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.folder = state_dir / "locks"
        self.holders = state_dir / "holders"
        self.run_id = run_id
        self.timeout = timeout
        # One lock object per stripe and per room: a room serves one thread, and filelock objects are
        # reentrant, so sharing one between threads would let both "hold" it at once.
        self._locks: dict[int, StripeLock] = {}
        self._holder_record: Path | None = None
        self._stripe_paths = [str(self.folder / f"stripe-{stripe:04d}.lock") for stripe in range(LOCK_STRIPES)]
        for folder in (self.folder, self.holders):
            make_shared_folder(folder)

    def register(self, agents: list[str]) -> None:
        """Record which run and agents this process publishes for, so a waiter can name them.

        One file per process and agent, because one process publishes several agents at once.
        """
        record = {"pid": os.getpid(), "run": self.run_id, "agents": sorted(agents), "since": time.time()}
        target = self.holders / f"{os.getpid()}.{'-'.join(sorted(agents))}.json"
        self._holder_record = target
        temporary = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(record), encoding="utf-8")
        os.chmod(temporary, HOLDER_FILE_MODE)
        temporary.replace(target)

    def unregister(self) -> None:
        """Remove this publisher's holder record; records of processes that died stay until overwritten."""
        if self._holder_record is not None:
            self._holder_record.unlink(missing_ok=True)
            self._holder_record = None

    def lock_file(self, key: str) -> Path:
        return Path(self._stripe_paths[self._stripe(key)])

    @staticmethod
    def _stripe(key: str) -> int:
        # CRC-32 spreads paths evenly enough and costs far less than a cryptographic hash per file.
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % LOCK_STRIPES

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the lock of the published path `key` until the block ends."""
        stripe = self._stripe(key)
        lock = self._locks.get(stripe)
        if lock is None:
            lock = StripeLock(self._stripe_paths[stripe], timeout=self.timeout, mode=LOCK_FILE_MODE, thread_local=False)
            self._locks[stripe] = lock
        path = Path(lock.lock_file)
        try:
            lock.acquire(poll_interval=0.01)
        except filelock.Timeout:
            raise LockTimeout(
                f"timed out after {self.timeout:g} s waiting for the lock on {key} ({path}); "
                f"it is held by {self.describe_holder(path)}. Wait for that publisher, or stop it if it hangs"
            ) from None
        except PermissionError as exc:
            raise LockDenied(denied_message(path, f"open the lock file for {key} at")) from exc
        try:
            yield
        finally:
            lock.release()

    def describe_holder(self, lock_path: Path) -> str:
        """Name the process that holds `lock_path`, from /proc/locks and the holder records."""
        pid = flock_holder(lock_path)
        if pid is None:
            return "an unknown process (it may have just released it)"
        runs: set[str] = set()
        agents: set[str] = set()
        for path in self.holders.glob(f"{pid}.*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            runs.add(str(record.get("run")))
            agents.update(record.get("agents") or [])
        if not runs:
            return f"process {pid}"
        return f"process {pid} (run {', '.join(sorted(runs))}, agents {', '.join(sorted(agents))})"


def flock_holder(path: Path) -> int | None:
    """Return the PID that holds a flock lock on `path`, read from /proc/locks."""
    try:
        info = os.stat(path)
        table = Path("/proc/locks").read_text(encoding="ascii")
    except OSError:
        return None
    lock_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2963 fe:00:1466546 0 EOF"; a waiter's line starts with "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == lock_id:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


def make_shared_folder(folder: Path) -> None:
    """Create `folder` and its missing parents group-shared, each with its mode set regardless of the umask."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
        except PermissionError as exc:
            raise LockDenied(denied_message(path, "create")) from exc
        try:
            if stat.S_IMODE(path.stat().st_mode) != SHARED_DIRECTORY_MODE:
                os.chmod(path, SHARED_DIRECTORY_MODE)
        except PermissionError:
            pass  # Only the owner may change the mode; another user created it.


def denied_message(path: Path, action: str) -> str:
    """Explain a permission error on `path`: who owns the nearest existing folder, and how to share it."""
    existing = path if path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return (
        f"cannot {action} {path}: permission denied; {_owner_and_mode(existing)}. Give every publishing user a "
        f"shared group with write access to the output tree, for example: chgrp -R GROUP {existing} && "
        f"chmod -R g+rwXs {existing}"
    )


def _owner_and_mode(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return f"{path} cannot be inspected"
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f"{path} belongs to {owner} (uid {info.st_uid}, gid {info.st_gid}) with mode {stat.filemode(info.st_mode)}"
