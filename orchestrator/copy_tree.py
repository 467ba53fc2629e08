"""Read an agent's source copy as a plain tree of files, never following a link out of it.

The copy belongs to the agent, which may swap any folder for a symlink at any moment. So every folder is
opened one component at a time from the copy's own descriptor with O_NOFOLLOW, every file with O_NOFOLLOW
and O_NONBLOCK (a FIFO cannot block the reader), and a symlink is recorded as a link with its target text.
Any path component named `.git` (in any letter case) is skipped: it is the copy's repository metadata, which
git never stores in a tree, and a `.git` entry in a tree would be a hook waiting for the next checkout.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .symlinks import DIRECTORY_FLAGS

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Deeper folders are not read; the walk reports them as skipped.
MAX_DEPTH = 64
GIT_FOLDER = ".git"

Kind = Literal["file", "link", "other"]
# Decides from a path and its lstat whether the walk reads the content; the monitor skips unchanged files.
WantData = Callable[[str, os.stat_result], bool]


@dataclass(frozen=True)
class TreeItem:
    # Relative POSIX path inside the copy.
    path: str
    kind: Kind
    executable: bool
    info: os.stat_result
    # The file's bytes or the link's target; None for other kinds and for files the caller did not want read.
    data: bytes | None


def blob_id(data: bytes) -> str:
    """Return git's SHA-1 object id of a blob with `data`, as `git hash-object` prints it."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def stat_key(info: os.stat_result) -> tuple[int, int, int, int, int]:
    """Return the fields whose change means a file may have new content."""
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode)


def is_git_name(name: str) -> bool:
    return name.lower() == GIT_FOLDER


def walk(
    root: Path,
    *,
    want_data: WantData | None = None,
    skipped: list[str] | None = None,
    exclude: Collection[str] = (),
) -> Iterator[TreeItem]:
    """Yield every file, link and special entry below `root`, in no particular order.

    Entries that vanish during the walk are left out, and so are the relative paths in `exclude` and all
    below them. Folders that cannot be opened and folders deeper than MAX_DEPTH are named in `skipped` when
    the caller passes a list.
    """
    root_fd = os.open(root, DIRECTORY_FLAGS)
    try:
        yield from _walk_from(root_fd, want_data, skipped, frozenset(exclude))
    finally:
        os.close(root_fd)


def _walk_from(
    root_fd: int, want_data: WantData | None, skipped: list[str] | None, exclude: frozenset[str]
) -> Iterator[TreeItem]:
    pending: list[tuple[str, int]] = [("", os.dup(root_fd))]
    try:
        while pending:
            folder, fd = pending.pop()
            try:
                names = os.listdir(fd)
                for name in names:
                    if is_git_name(name):
                        continue
                    path = f"{folder}/{name}" if folder else name
                    if path in exclude:
                        continue
                    child = _open_child(fd, name, path, skipped)
                    if child is not None:
                        pending.append((path, child))
                        continue
                    item = _item(fd, name, path, want_data)
                    if item is not None:
                        yield item
            except OSError:
                if skipped is not None:
                    skipped.append(folder or ".")
            finally:
                os.close(fd)
    finally:
        for _, fd in pending:
            os.close(fd)


def _open_child(fd: int, name: str, path: str, skipped: list[str] | None) -> int | None:
    """Open `name` as a folder without following a link; return None for anything else or a skipped folder."""
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    if path.count("/") + 1 >= MAX_DEPTH:
        if skipped is not None:
            skipped.append(path)
        return None
    try:
        return os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
    except OSError:
        if skipped is not None:
            skipped.append(path)
        return None


def _item(fd: int, name: str, path: str, want_data: WantData | None) -> TreeItem | None:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=fd)
        except OSError:
            return None
        return TreeItem(path, "link", False, info, os.fsencode(target))
    if not stat.S_ISREG(mode):
        return TreeItem(path, "other", False, info, None)
    executable = bool(mode & stat.S_IXUSR)
    if want_data is not None and not want_data(path, info):
        return TreeItem(path, "file", executable, info, None)
    data = _read_file(fd, name)
    if data is None:
        return None
    content, opened = data
    return TreeItem(path, "file", bool(opened.st_mode & stat.S_IXUSR), opened, content)


def _read_file(fd: int, name: str) -> tuple[bytes, os.stat_result] | None:
    """Read a regular file without following a link; None when it vanished or is no longer a regular file."""
    try:
        file_fd = os.open(name, FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None
    try:
        opened = os.fstat(file_fd)
        if not stat.S_ISREG(opened.st_mode):
            return None
        chunks = []
        while chunk := os.read(file_fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), opened
    except OSError:
        return None
    finally:
        os.close(file_fd)
