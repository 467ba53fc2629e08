"""File operations relative to directory descriptors that never follow a symlink.

Every path component is opened with O_NOFOLLOW relative to the descriptor of
its parent, so an agent that swaps a folder for a symlink between a check and
a use gets an error, not a redirected write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import os
import secrets
import stat
from collections.abc import Callable
from typing import Any

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SHARED_DIRECTORY_MODE = 0o2775
TEMPORARY_PREFIX = ".orchestrate-tmp-"


class UnsafePath(Exception):
    """A path component is a symlink or not the type expected; the message names it."""


def open_directory(path: str | os.PathLike[str]) -> int:
    """Open a folder that must not itself be a symlink."""
    try:
        return os.open(path, DIRECTORY_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{os.fspath(path)} is a symlink or not a folder") from exc
        raise


def open_child_directory(parent_fd: int, name: str, *, create: bool = False) -> int:
    """Open (and with `create`, make) the folder `name` inside `parent_fd` without following links."""
    try:
        return os.open(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{name} is a symlink or a file, not a folder") from exc
        raise

    try:
        os.mkdir(name, SHARED_DIRECTORY_MODE, dir_fd=parent_fd)
    except FileExistsError:
        pass  # Another publisher made it first.
    fd = open_child_directory(parent_fd, name)
    _set_mode(fd, SHARED_DIRECTORY_MODE)
    return fd


def _set_mode(fd: int, mode: int) -> None:
    # The umask trims the mode given to mkdir, so set it explicitly; only the owner may.
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except PermissionError:
        pass


_RANDOM = secrets.token_hex(4)
_names = itertools.count()


def write_new_file(dir_fd: int, data: bytes, *, mode: int) -> str:
    """Write `data` to a fresh temporary file in `dir_fd`; return its name."""
    for _attempt in range(8):
        # A process-wide counter, with a random part so two processes never race for one name.
        name = f"{TEMPORARY_PREFIX}{os.getpid()}-{_RANDOM}-{next(_names)}"
        try:
            fd = os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            _write_all(fd, data)
            # The umask trimmed the mode given to open; set it exactly.
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            raise
        os.close(fd)
        return name
    raise FileExistsError("could not find a free temporary file name")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_regular_file(dir_fd: int, name: str, *, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following links or blocking; raise UnsafePath for anything else."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{name} became a symlink") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{name} is not a regular file")
        # One read usually returns the whole file; the loop covers files that grow while being read.
        first = os.read(fd, min(info.st_size + 1, max_bytes + 1))
        if len(first) <= info.st_size:
            return first, info
        chunks = [first]
        remaining = max_bytes + 1 - len(first)
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


RENAME_EXCHANGE = 2


def exchange(source_dir_fd: int, source: str, target_dir_fd: int, target: str) -> bool:
    """Swap two names atomically (renameat2 with RENAME_EXCHANGE); return False where it is unsupported."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(source_dir_fd, os.fsencode(source), target_dir_fd, os.fsencode(target), RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), target)


def sync_filesystem(fd: int) -> None:
    """Flush every dirty page of the file system that contains `fd`, once for a whole batch."""
    if _SYNCFS is not None and _SYNCFS(fd) == 0:
        return
    os.sync()


def _libc_function(name: str, argument_types: list[Any]) -> Any:
    """Return a C library function that Python's os module lacks, or None where it does not exist."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argument_types
    function.restype = ctypes.c_int
    return function


_SYNCFS: Callable[[int], int] | None = _libc_function("syncfs", [ctypes.c_int])
_RENAMEAT2: Callable[[int, bytes, int, bytes, int], int] | None = _libc_function(
    "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
)
