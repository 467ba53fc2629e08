"""A minimal inotify binding through ctypes: one non-blocking descriptor, watches, raw events.

File-watching libraries tend to hide three things the monitor needs. It needs
to know which file was closed after writing (IN_CLOSE_WRITE). It needs a queue
overflow as an event of its own. And it must tell "the watch limit is reached"
(ENOSPC) from any other failure, so it can fall back to polling for one
workspace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Events watched in every workspace folder. The mask has no IN_DONT_FOLLOW, because the monitor opens each
# folder with O_NOFOLLOW first and then watches it through its /proc/self/fd link, which must be followed.
WORKSPACE_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK
)

_HEADER = struct.Struct("iIII")
# Large enough for a burst of events; the kernel never splits one event across reads.
READ_SIZE = 256 * 1024


class WatchLimitReached(OSError):
    """The kernel's inotify watch budget (fs.inotify.max_user_watches) is used up."""


@dataclass(frozen=True)
class RawEvent:
    wd: int
    mask: int
    cookie: int
    name: bytes


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """One inotify instance; every method raises OSError with the kernel's errno."""

    def __init__(self) -> None:
        self._lib = _libc()
        fd = self._lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1 failed: {os.strerror(code)}")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("the inotify instance is closed")
        return self._fd

    def add_watch(self, path: bytes, mask: int = WORKSPACE_MASK) -> int:
        wd = int(self._lib.inotify_add_watch(self.fileno(), ctypes.c_char_p(path), ctypes.c_uint32(mask)))
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:
                raise WatchLimitReached(code, "the inotify watch limit is reached (fs.inotify.max_user_watches)")
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return wd

    def remove_watch(self, wd: int) -> None:
        # The kernel drops a folder's watch itself when the folder goes; EINVAL then is no error.
        self._lib.inotify_rm_watch(self.fileno(), ctypes.c_int(wd))

    def read(self) -> list[RawEvent]:
        """Return the events queued now; [] when none are."""
        try:
            data = os.read(self.fileno(), READ_SIZE)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def parse_events(data: bytes) -> list[RawEvent]:
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(RawEvent(wd, mask, cookie, name))
    return events
