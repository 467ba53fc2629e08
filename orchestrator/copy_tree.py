"""Read an agent's source copy as a plain tree of files, never following a link out of it.

The copy belongs to the agent, which may swap any folder for a symlink at any moment. So every folder is
opened one component at a time from the copy's own descriptor with O_NOFOLLOW. Every file is opened with
O_NOFOLLOW and O_NONBLOCK, so a FIFO cannot block the reader. A symlink is recorded as a link with its
target text.
Any path component that a file system could take for `.git` is skipped: it is the copy's repository
metadata, which git never stores in a tree, and a `.git` entry in a tree would plant hooks and configuration
at the next checkout. Symlinks named like `.gitmodules` or `.gitattributes` are skipped too, because
`git fsck` rejects a tree with a symlinked `.gitmodules`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .symlinks import DIRECTORY_FLAGS

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Deeper folders are not read; the walk reports them as skipped.
MAX_DEPTH = 64
GIT_FOLDER = ".git"

Kind = Literal["file", "link", "other"]
# Decides from a path and its lstat whether the walk opens a file; the monitor skips unchanged files.
WantData = Callable[[str, os.stat_result], bool]
# Called with each folder's relative path and open descriptor, so the monitor can watch it.
OnFolder = Callable[[str, int], None]
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class TreeItem:
    # Relative POSIX path inside the copy.
    path: str
    kind: Kind
    executable: bool
    # The lstat of the entry, or the fstat of the opened file.
    info: os.stat_result
    # A link's target; None for files and other kinds.
    target: bytes | None = None
    # The opened file, for files the caller wanted: valid only until the walk moves to the next entry.
    fd: int | None = None


# Marks a link's blob id in a Baseline: a file replaced by a link whose target text equals the file's content
# has the same blob id, yet it is a change.
LINK_MARK = "link:"
# Marks an executable file's blob id, since git records the executable bit and a chmod alone is a change.
EXECUTABLE_MARK = "exec:"


def content_key(item: TreeItem, blob: str) -> str:
    """Return what a Baseline records for an entry: its blob id, marked for a link or an executable file."""
    if item.target is not None:
        return LINK_MARK + blob
    return EXECUTABLE_MARK + blob if item.executable else blob


@dataclass
class Baseline:
    """The blob id and size of every file and link of a copy at the start, by relative path."""

    # Blob ids as `content_key` marks them, so a link or an executable file differs from a plain file.
    blobs: dict[str, str] = field(default_factory=dict)
    # A file whose size differs from this cannot hold the starting content, so the monitor need not read it.
    sizes: dict[str, int] = field(default_factory=dict)

    def add(self, item: TreeItem, blob: str) -> None:
        self.blobs[item.path] = content_key(item, blob)
        self.sizes[item.path] = len(item.target) if item.target is not None else item.info.st_size

    def to_json(self) -> dict[str, dict[str, str] | dict[str, int]]:
        return {"blobs": self.blobs, "sizes": self.sizes}


def blob_id(data: bytes) -> str:
    """Return git's SHA-1 object id of a blob with `data`, as `git hash-object` prints it."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def read_chunks(item: TreeItem) -> Iterator[bytes]:
    """Yield exactly the size the file had when opened, so a stream that announced the size stays valid.

    A file that an agent shortens while it is read is padded with NUL bytes; one that grows is cut. Both show
    as a changed stat on the next walk.
    """
    assert item.fd is not None
    remaining = item.info.st_size
    while remaining > 0:
        chunk = os.read(item.fd, min(READ_CHUNK, remaining))
        if not chunk:
            yield bytes(remaining)
            return
        remaining -= len(chunk)
        yield chunk


def read_all(item: TreeItem) -> bytes:
    return b"".join(read_chunks(item))


def item_blob_id(item: TreeItem) -> str:
    """Return the blob id of an opened file or a link, reading a file in chunks rather than whole."""
    if item.target is not None:
        return blob_id(item.target)
    digest = hashlib.sha1(b"blob %d\x00" % item.info.st_size, usedforsecurity=False)
    for chunk in read_chunks(item):
        digest.update(chunk)
    return digest.hexdigest()


def stat_key(info: os.stat_result) -> tuple[int, int, int, int, int]:
    """Return the fields whose change means a file may have new content."""
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode)


# Code points that HFS+ ignores in names, as git's own path checks (utf8.c) list them.
HFS_IGNORED = frozenset([*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])
# The 8.3 short name NTFS may give `.git` or `.gitmodules`, such as GIT~1 or GITMOD~1.
NTFS_SHORT_NAME = re.compile(r"git[a-z]{0,3}~[0-9]")


def folded_name(name: str) -> str:
    """Return `name` as HFS+ and NTFS compare it: ignored code points dropped, lower case, no stream or tail."""
    text = "".join(char for char in name if ord(char) not in HFS_IGNORED).lower()
    # NTFS ends a name at an alternate data stream (':') or a path separator, and drops trailing dots and spaces.
    text = re.split(r"[:\\]", text, maxsplit=1)[0]
    return text.rstrip(" .")


def is_git_name(name: str) -> bool:
    """Return whether a checkout on some file system could write `name` as the `.git` folder."""
    return folded_name(name) == GIT_FOLDER or name.lower().rstrip(" .") == "git~1"


def is_special_git_link(name: str) -> bool:
    """Return whether a symlink named `name` could stand for `.gitmodules`, `.gitattributes` or the like."""
    folded = folded_name(name)
    return folded.startswith(GIT_FOLDER) or NTFS_SHORT_NAME.fullmatch(folded) is not None


def walk(
    root: Path,
    *,
    want_data: WantData | None = None,
    skipped: list[str] | None = None,
    exclude: Collection[str] = (),
    on_folder: OnFolder | None = None,
) -> Iterator[TreeItem]:
    """Yield every file, link and special entry below `root`, in no particular order.

    Files are yielded opened (`fd`) unless `want_data` returns False for them. Entries that vanish during the walk
    are left out, and so are the relative paths in `exclude` and all below them. Folders and files that
    cannot be opened, folders deeper than MAX_DEPTH and symlinks named like git's own files are named in
    `skipped` when the caller passes a list.
    """
    missed = skipped if skipped is not None else []
    root_fd = os.open(root, DIRECTORY_FLAGS)
    try:
        yield from _walk_from(root_fd, want_data, missed, frozenset(exclude), on_folder)
    finally:
        os.close(root_fd)


def _walk_from(
    root_fd: int,
    want_data: WantData | None,
    skipped: list[str],
    exclude: frozenset[str],
    on_folder: OnFolder | None,
) -> Iterator[TreeItem]:
    pending: list[tuple[str, int]] = [("", os.dup(root_fd))]
    try:
        while pending:
            folder, fd = pending.pop()
            try:
                if on_folder is not None:
                    on_folder(folder, fd)
                yield from _folder(folder, fd, pending, want_data, skipped, exclude)
            finally:
                os.close(fd)
    finally:
        for _, fd in pending:
            os.close(fd)


def _folder(
    folder: str,
    fd: int,
    pending: list[tuple[str, int]],
    want_data: WantData | None,
    skipped: list[str],
    exclude: frozenset[str],
) -> Iterator[TreeItem]:
    try:
        names = os.listdir(fd)
    except OSError:
        skipped.append(folder or ".")
        return
    for name in names:
        path = f"{folder}/{name}" if folder else name
        if is_git_name(name) or path in exclude:
            continue
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue  # Gone between the listing and the stat.
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            child = _open_folder(fd, name, path, skipped)
            if child is not None:
                pending.append((path, child))
        elif stat.S_ISLNK(mode):
            if is_special_git_link(name):
                skipped.append(path)
                continue
            try:
                target = os.readlink(name, dir_fd=fd)
            except OSError:
                continue
            yield TreeItem(path, "link", False, info, target=os.fsencode(target))
        elif not stat.S_ISREG(mode):
            yield TreeItem(path, "other", False, info)
        elif want_data is not None and not want_data(path, info):
            yield TreeItem(path, "file", bool(mode & stat.S_IXUSR), info)
        else:
            yield from _opened_file(fd, name, path, skipped)


def _open_folder(fd: int, name: str, path: str, skipped: list[str]) -> int | None:
    """Open a folder without following a link; None, with the path in `skipped`, when it cannot be entered."""
    if path.count("/") + 1 >= MAX_DEPTH:
        skipped.append(path)
        return None
    try:
        return os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
    except OSError:
        skipped.append(path)
        return None


def _opened_file(fd: int, name: str, path: str, skipped: list[str]) -> Iterator[TreeItem]:
    """Yield a regular file opened without following a link; the descriptor closes when the caller moves on."""
    try:
        file_fd = os.open(name, FILE_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        return
    except OSError:
        skipped.append(path)
        return
    try:
        opened = os.fstat(file_fd)
        if stat.S_ISREG(opened.st_mode):
            yield TreeItem(path, "file", bool(opened.st_mode & stat.S_IXUSR), opened, fd=file_fd)
    finally:
        os.close(file_fd)
