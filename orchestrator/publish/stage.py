"""Walk an agent's workspace and copy every publishable file into a private staging folder.

The walk opens each folder relative to its parent with O_NOFOLLOW and reads
each file the same way, so nothing outside the workspace is ever read. A
symlink, device, FIFO, socket, setuid file or hard link to a file outside the
workspace is never staged: each becomes a finding. Claims, names and limits
are checked here too, before a byte is copied.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..claims import Claim
from ..copy_tree import is_git_name
from ..layout import STATE_FOLDER
from ..symlinks import ReadLink, link_escapes, reader_under
from .fsops import TEMPORARY_PREFIX, UnsafePath, open_child_directory, open_directory, read_regular_file, write_new_file
from .model import (
    CLAIM_VIOLATION,
    ESCAPE_ATTEMPT,
    INVALID_NAME,
    LIMIT_EXCEEDED,
    UNREADABLE,
    Finding,
    PublishLimits,
    SharedMode,
    Staged,
)


@dataclass
class _Walk:
    # None checks the workspace without copying anything.
    staging_fd: int | None
    claims: Sequence[Claim]
    shared: Sequence[tuple[Claim, SharedMode]]
    limits: PublishLimits
    staged: list[Staged] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    total_bytes: int = 0
    stopped: bool = False
    # Names seen per inode, to tell hard links inside the workspace from links to outside files.
    links: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    link_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    # Publish only these paths, and walk only the folders that lead to them; None walks everything.
    only: frozenset[str] | None = None
    only_folders: frozenset[str] = frozenset()
    readlink: ReadLink | None = None

    def skips(self, path: str, is_folder: bool) -> bool:
        if self.only is None:
            return False
        return path not in (self.only_folders if is_folder else self.only)


def stage_workspace(
    workspace: str | os.PathLike[str],
    staging_fd: int | None,
    *,
    claims: Sequence[Claim],
    shared: Sequence[tuple[Claim, SharedMode]],
    limits: PublishLimits,
    only: frozenset[str] | None = None,
) -> tuple[list[Staged], list[Finding], list[str]]:
    """Stage every publishable file of `workspace`; return the staged files, findings and notices.

    With `staging_fd` None nothing is copied: the walk only collects findings.
    With `only`, every other path is left alone, as if it were not there.
    """
    walk = _Walk(staging_fd=staging_fd, claims=claims, shared=shared, limits=limits, only=only,
                 only_folders=_leading_folders(only or ()))
    root_fd = open_directory(workspace)
    walk.readlink = reader_under(root_fd)
    # Folders wait as names, not open descriptors, so a workspace of many folders cannot exhaust them.
    pending: Pending = [()]
    try:
        while pending and not walk.stopped:
            parts = pending.pop()
            try:
                folder_fd = _open_chain(root_fd, parts)
            except UnsafePath:
                walk.findings.append(Finding(ESCAPE_ATTEMPT, "/".join(parts), "a folder on the way became a symlink"))
                continue
            except OSError as exc:
                walk.findings.append(Finding(UNREADABLE, "/".join(parts), f"cannot be opened ({exc.strerror})"))
                continue
            try:
                _walk_folder(walk, parts, folder_fd, pending)
            finally:
                if folder_fd != root_fd:
                    os.close(folder_fd)
    finally:
        os.close(root_fd)

    _drop_outside_hard_links(walk)
    walk.staged.sort(key=lambda item: item.path)
    walk.findings.sort(key=lambda item: (item.path, item.kind))
    return walk.staged, walk.findings, walk.notices


def _leading_folders(paths: frozenset[str] | tuple[()]) -> frozenset[str]:
    folders: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[:index]) for index in range(1, len(parts) + 1))
    return frozenset(folders)


Pending = list[tuple[str, ...]]
MAX_DEPTH = 64
MAX_PATH_BYTES = 3000


def _open_chain(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open root/parts[0]/.../parts[-1] one component at a time, never following a symlink."""
    fd = root_fd
    for part in parts:
        child = open_child_directory(fd, part)
        if fd != root_fd:
            os.close(fd)
        fd = child
    return fd


def _walk_folder(walk: _Walk, parts: tuple[str, ...], folder_fd: int, pending: Pending) -> None:
    folder = "/".join(parts) or "."
    try:
        entries = sorted(os.scandir(folder_fd), key=lambda entry: entry.name)
    except OSError as exc:
        walk.findings.append(Finding(UNREADABLE, folder, f"cannot be listed ({exc.strerror})"))
        return

    for entry in entries:
        if walk.stopped:
            return
        path = "/".join((*parts, entry.name))
        if walk.skips(path, entry.is_dir(follow_symlinks=False)):
            continue
        problem = name_problem(entry.name, top_level=not parts)
        if problem:
            walk.findings.append(Finding(INVALID_NAME, _printable(path), problem))
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            walk.findings.append(Finding(UNREADABLE, path, f"cannot be inspected ({exc.strerror})"))
            continue
        _visit(walk, parts, folder_fd, entry.name, path, info, pending)


def _visit(
    walk: _Walk,
    parts: tuple[str, ...],
    folder_fd: int,
    name: str,
    path: str,
    info: os.stat_result,
    pending: Pending,
) -> None:
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        _visit_symlink(walk, parts, folder_fd, name, path)
    elif stat.S_ISDIR(mode):
        if len(parts) + 1 >= MAX_DEPTH:
            walk.findings.append(Finding(LIMIT_EXCEEDED, path, f"folders nested deeper than {MAX_DEPTH} levels"))
        else:
            pending.append((*parts, name))
    elif stat.S_ISREG(mode):
        _visit_file(walk, parts, folder_fd, name, path, info)
    else:
        kind = _special_kind(mode)
        walk.findings.append(Finding(ESCAPE_ATTEMPT, path, f"is a {kind}; only regular files are published"))


def _visit_symlink(walk: _Walk, parts: tuple[str, ...], folder_fd: int, name: str, path: str) -> None:
    try:
        target = os.readlink(name, dir_fd=folder_fd)
    except OSError as exc:
        walk.findings.append(Finding(UNREADABLE, path, f"symlink cannot be read ({exc.strerror})"))
        return
    if symlink_escapes(parts, target, walk.readlink):
        detail = f"symlink to {_printable(target)} points outside the workspace"
        walk.findings.append(Finding(ESCAPE_ATTEMPT, path, detail))
    else:
        walk.notices.append(f"{path}: symlink not published (links are never followed)")


def _visit_file(
    walk: _Walk, parts: tuple[str, ...], folder_fd: int, name: str, path: str, info: os.stat_result
) -> None:
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        walk.findings.append(Finding(LIMIT_EXCEEDED, path[:80] + "...", f"path longer than {MAX_PATH_BYTES} bytes"))
        return
    if walk.claims and not any(claim.matches(path) for claim in walk.claims):
        patterns = ", ".join(claim.pattern for claim in walk.claims)
        walk.findings.append(Finding(CLAIM_VIOLATION, path, f"outside this agent's claims ({patterns})"))
        return
    if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
        walk.findings.append(Finding(ESCAPE_ATTEMPT, path, "has the setuid or setgid bit set"))
        return
    if not _within_limits(walk, path, info.st_size):
        return

    try:
        data, opened = read_regular_file(folder_fd, name, max_bytes=walk.limits.max_file_size)
    except UnsafePath as exc:
        walk.findings.append(Finding(ESCAPE_ATTEMPT, path, f"{exc} during the scan"))
        return
    except OSError as exc:
        walk.findings.append(Finding(UNREADABLE, path, f"cannot be read ({exc.strerror})"))
        return
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        walk.findings.append(Finding(ESCAPE_ATTEMPT, path, "was replaced by another file during the scan"))
        return
    if not _within_limits(walk, path, len(data)):
        return

    walk.total_bytes += len(data)
    key = (opened.st_dev, opened.st_ino)
    walk.links.setdefault(key, []).append(path)
    walk.link_counts[key] = opened.st_nlink
    # Only the executable bits survive; setuid, setgid, sticky and write bits are the publisher's to set.
    mode = 0o755 if opened.st_mode & stat.S_IXUSR else 0o644
    staged_name = "" if walk.staging_fd is None else write_new_file(walk.staging_fd, data, mode=mode)
    walk.staged.append(
        Staged(
            path=path,
            parts=(*parts, name),
            staged_name=staged_name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            mode=mode,
            shared_mode=_shared_mode(walk, path),
        )
    )


def _within_limits(walk: _Walk, path: str, size: int) -> bool:
    limits = walk.limits
    if len(walk.staged) >= limits.max_files:
        detail = f"more than {limits.max_files} files; this one and the rest are not published"
        walk.findings.append(Finding(LIMIT_EXCEEDED, path, detail))
        walk.stopped = True
        return False
    if size > limits.max_file_size:
        walk.findings.append(Finding(LIMIT_EXCEEDED, path, f"larger than the {limits.max_file_size}-byte file limit"))
        return False
    if walk.total_bytes + size > limits.max_total_bytes:
        walk.findings.append(
            Finding(LIMIT_EXCEEDED, path, f"would pass the {limits.max_total_bytes}-byte total limit of this agent")
        )
        return False
    return True


def _shared_mode(walk: _Walk, path: str) -> SharedMode:
    for claim, mode in walk.shared:
        if claim.matches(path):
            return mode
    return "exclusive"


def _drop_outside_hard_links(walk: _Walk) -> None:
    """Unstage files whose inode has more names than the workspace holds: a link to an outside file."""
    outside = {
        path
        for key, paths in walk.links.items()
        if walk.link_counts[key] > len(paths)
        for path in paths
    }
    if not outside:
        return
    remaining = []
    for item in walk.staged:
        if item.path in outside:
            if walk.staging_fd is not None:
                os.unlink(item.staged_name, dir_fd=walk.staging_fd)
            walk.findings.append(Finding(ESCAPE_ATTEMPT, item.path, "is a hard link to a file outside the workspace"))
        else:
            remaining.append(item)
    walk.staged = remaining


_SURROGATE = re.compile("[\udc80-\udcff]")
# C0 and C1 control characters, and the bidirectional overrides that can reorder text on a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str, *, top_level: bool) -> str | None:
    """Return why a file name cannot be published, or None."""
    if _SURROGATE.search(name):
        return "the name is not valid UTF-8"
    if _CONTROL.search(name):
        return "the name contains control characters"
    if name in (".", ".."):
        return "the name is '.' or '..'"
    if top_level and name == STATE_FOLDER:
        return f"{STATE_FOLDER} is reserved for orchestrate's own records"
    if name.startswith(TEMPORARY_PREFIX):
        return f"names starting with {TEMPORARY_PREFIX} are reserved for orchestrate's temporary files"
    if is_git_name(name):
        # A published .git makes a repository whose agent-written hooks and fsmonitor run on the host
        # as soon as git, or a shell prompt that calls git, runs in the output tree.
        return ("invalid name .git: git on the host would run this repository's hooks. "
                "Write the repository as a bundle (git bundle create) or an archive instead")
    return None


def symlink_escapes(parts: tuple[str, ...], target: str, readlink: ReadLink | None = None) -> bool:
    """Return whether a link at `parts`/name with `target` resolves outside the workspace."""
    return link_escapes(parts, target, readlink)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _printable(text: str) -> str:
    """Escape control characters and undecodable bytes, so a finding cannot rewrite the terminal."""
    escaped = _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return escaped.encode("utf-8", errors="backslashreplace").decode("utf-8")
