"""Record an agent's source copy as a git commit in a repository the host trusts, without running its git.

`git fast-import` writes the objects and the commit from a stream that Python builds by reading the copy
(`copy_tree`), so nothing from the copy's `.git` (hooks, config, attributes, filters) is ever used: the
stream carries only paths, modes and bytes. The snapshot's parent is the commit the copies started from,
so `git diff` and `git merge-tree` see exactly the agent's changes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .copy_tree import Baseline, TreeItem, blob_id, item_blob_id, read_all, read_chunks, walk
from .fsck_files import MAX_CHECKED_SIZE, checked_name, fsck_problem
from .host_git import git, git_stream, git_text, repository_lock
from .results import printable

FILE_MODE = b"100644"
EXECUTABLE_MODE = b"100755"
LINK_MODE = b"120000"
GITLINK_MODE = b"160000"
REF_PREFIX = "refs/orchestrate/runs"

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    commit: str
    # Blob id and size of every file and link, by path: the content the snapshot recorded.
    recorded: Baseline = field(default_factory=Baseline)
    # Entries that are neither files nor links (FIFOs, sockets, devices): git cannot store them.
    special: list[str] = field(default_factory=list)
    # Entries the walk did not read (unreadable, nested too deep, symlinks named like `.gitmodules`). They keep
    # their starting content in the commit, or are left out when the start did not have them.
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
        starting = _tree_entries(git_dir, parent) if parent is not None else {}
        git_stream(git_dir, ["fast-import", "--quiet", "--force", "--done"],
                   _stream(copy, result, parent=parent, ref=ref, author=author, message=message, starting=starting))
        result.commit = git_text(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")
    if result.skipped:
        log.warning("%s: %d entries keep their starting content (or are left out when new) in commit %s, because "
                    "they could not be read, are nested too deep, are symlinks named like git's own files or would "
                    "fail git fsck: %s",
                    copy, len(result.skipped),
                    result.commit[:12], ", ".join(printable(path) for path in result.skipped[:10]))
    if result.special:
        log.warning("%s: %d FIFOs, sockets or devices are not recorded in commit %s: %s", copy,
                    len(result.special), result.commit[:12], ", ".join(printable(path) for path in result.special[:10]))
    return result


def _tree_entries(git_dir: Path, commit: str) -> dict[str, tuple[bytes, str]]:
    """Return every entry of a commit's tree, folders and submodules included: path to mode and object id."""
    listing = git(git_dir, "ls-tree", "-r", "-t", "-z", commit).stdout
    entries = {}
    for record in listing.split(b"\x00"):
        header, _, path = record.partition(b"\t")
        fields = header.split()
        if len(fields) == 3:
            entries[path.decode("utf-8", "surrogateescape")] = (fields[0], fields[2].decode())
    return entries


def _stream(
    copy: Path,
    result: Snapshot,
    *,
    parent: str | None,
    ref: str,
    author: tuple[str, str],
    message: str,
    starting: dict[str, tuple[bytes, str]],
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
    # A clone leaves submodules empty, so each keeps the commit the start recorded, whatever its folder contains.
    gitlinks = [path for path, (mode, _oid) in starting.items() if mode == GITLINK_MODE]
    for path in gitlinks:
        yield _keep(path, starting[path])
    for item in walk(copy, skipped=result.skipped, exclude=gitlinks):
        if item.fd is not None and checked_name(item.path.rsplit("/", 1)[-1]) is not None:
            yield from _checked_entry(item, result, starting)
        else:
            yield from _entry(item, result)
    # What the walk could not read keeps its starting content. Left out, a file nested deeper than the walk
    # goes, or one the agent made unreadable, would count as deleted, and merge would delete it.
    for path in result.skipped:
        if path in starting:
            yield _keep(path, starting[path])
    yield b"\ndone\n"


def _keep(path: str, entry: tuple[bytes, str]) -> bytes:
    """Return the command that sets `path` to an object of the starting commit (a blob, tree or submodule)."""
    mode, oid = entry
    return b"M " + mode + b" " + oid.encode() + b" " + quote_path(path) + b"\n"


def _checked_entry(item: TreeItem, result: Snapshot, starting: dict[str, tuple[bytes, str]]) -> Iterator[bytes]:
    """Record a `.gitmodules` or `.gitattributes` file only when git fsck accepts it or it is unchanged."""
    name = checked_name(item.path.rsplit("/", 1)[-1])
    assert name is not None
    data = read_all(item) if item.info.st_size <= MAX_CHECKED_SIZE else b""
    if item.info.st_size > MAX_CHECKED_SIZE:
        problem: str | None = f"larger than {MAX_CHECKED_SIZE} bytes"
    elif starting.get(item.path, (b"", ""))[1] == blob_id(data):
        problem = None
    else:
        problem = fsck_problem(name, data)
    if problem is not None:
        # Left to the end of the stream, which keeps the starting content or leaves the file out.
        log.warning("%s is not recorded, because git fsck would reject it: %s", printable(item.path), problem)
        result.skipped.append(item.path)
        return
    mode = EXECUTABLE_MODE if item.executable else FILE_MODE
    yield b"M " + mode + b" inline " + quote_path(item.path) + b"\n"
    yield b"data %d\n" % len(data) + data + b"\n"
    result.recorded.add(item, blob_id(data))


def _entry(item: TreeItem, result: Snapshot) -> Iterator[bytes]:
    if item.kind == "other":
        result.special.append(item.path)
        return
    if item.target is not None:
        mode, size = LINK_MODE, len(item.target)
        result.recorded.add(item, blob_id(item.target))
    else:
        mode, size = (EXECUTABLE_MODE if item.executable else FILE_MODE), item.info.st_size
    yield b"M " + mode + b" inline " + quote_path(item.path) + b"\n"
    yield b"data %d\n" % size
    if item.target is not None:
        yield item.target
    else:
        digest = hashlib.sha1(b"blob %d\x00" % size, usedforsecurity=False)
        for chunk in read_chunks(item):
            digest.update(chunk)
            yield chunk
        result.recorded.add(item, digest.hexdigest())
    yield b"\n"


def tree_baseline(copy: Path) -> Baseline:
    """Return the blob id and size of every file and link in a copy, as a snapshot would record them."""
    baseline = Baseline()
    for item in walk(copy):
        if item.kind != "other":
            baseline.add(item, item_blob_id(item))
    return baseline
