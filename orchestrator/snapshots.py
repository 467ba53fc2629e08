"""Record an agent's source copy as a git commit in a repository the host trusts, without running its git.

`git fast-import` writes the objects and the commit from a stream that Python builds by reading the copy
(`copy_tree`), so nothing from the copy's `.git` (hooks, config, attributes, filters) is ever used: the
stream carries only paths, modes and bytes. The snapshot's parent is the commit the copies started from,
so `git diff` and `git merge-tree` see exactly the agent's changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .copy_tree import TreeItem, blob_id, walk
from .host_git import git_stream, git_text, repository_lock

FILE_MODE = b"100644"
EXECUTABLE_MODE = b"100755"
LINK_MODE = b"120000"
REF_PREFIX = "refs/orchestrate/runs"


@dataclass
class Snapshot:
    commit: str
    # Blob id of every file and link, by path: the content the snapshot recorded.
    blobs: dict[str, str] = field(default_factory=dict)
    # Entries that are neither files nor links (FIFOs, sockets, devices): git cannot store them.
    special: list[str] = field(default_factory=list)
    # Folders the walk could not read or that were nested too deep.
    skipped: list[str] = field(default_factory=list)


def snapshot_ref(run_id: str, agent: str) -> str:
    return f"{REF_PREFIX}/{run_id}/{agent}"


def quote_path(path: str) -> bytes:
    """Quote a path the C way that fast-import reads, so quotes, newlines and control bytes survive."""
    out = bytearray(b'"')
    for byte in path.encode("utf-8", "surrogateescape"):
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


def take_snapshot(
    copy: Path,
    *,
    git_dir: Path,
    parent: str | None,
    ref: str,
    author: tuple[str, str],
    message: str,
) -> Snapshot:
    """Write the copy's files as one commit on `ref` of the repository at `git_dir`; return what was recorded."""
    result = Snapshot(commit="")
    with repository_lock(git_dir):
        git_stream(git_dir, ["fast-import", "--quiet", "--force", "--done"],
                   _stream(copy, result, parent=parent, ref=ref, author=author, message=message))
        result.commit = git_text(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")
    return result


def _stream(
    copy: Path, result: Snapshot, *, parent: str | None, ref: str, author: tuple[str, str], message: str
) -> Iterator[bytes]:
    now = int(time.time())
    name, email = author
    text = message.encode() + b"\n"
    yield b"commit " + ref.encode() + b"\n"
    yield b"author %s <%s> %d +0000\n" % (name.encode(), email.encode(), now)
    yield b"committer orchestrate <orchestrate@localhost> %d +0000\n" % now
    yield b"data %d\n" % len(text) + text
    if parent is not None:
        yield b"from " + parent.encode() + b"\n"
    yield b"deleteall\n"
    for item in walk(copy, skipped=result.skipped):
        yield from _entry(item, result)
    yield b"\ndone\n"


def _entry(item: TreeItem, result: Snapshot) -> Iterator[bytes]:
    if item.kind == "other" or item.data is None:
        result.special.append(item.path)
        return
    if item.kind == "link":
        mode = LINK_MODE
    else:
        mode = EXECUTABLE_MODE if item.executable else FILE_MODE
    result.blobs[item.path] = blob_id(item.data)
    yield b"M " + mode + b" inline " + quote_path(item.path) + b"\n"
    yield b"data %d\n" % len(item.data)
    yield item.data
    yield b"\n"


def tree_blobs(copy: Path) -> dict[str, str]:
    """Return the blob id of every file and link in a copy, as a snapshot would record them."""
    return {item.path: blob_id(item.data) for item in walk(copy) if item.data is not None}
