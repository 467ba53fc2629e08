"""Collect the evidence of a stopped run into `runs/<run-id>/evidence/`, without trusting any workspace.

Evidence is collected only after every container of the run has stopped, so
collecting it never delays a stop. A workspace may still contain whatever an
agent left there: symlinks to the orchestrator's secrets, FIFOs and device
nodes that block a reader, folders it made unreadable, names that are not
UTF-8, and millions of entries. So the listing walks folders by descriptor
and never follows a symlink. It opens files with O_NONBLOCK, hashes only
what `fstat` shows to be a regular file, and stays within an entry count, a
depth, a byte budget and a deadline. A hostile entry becomes a note in the
listing and never an exception.

Each collection writes a new folder (`evidence`, then `evidence-2`, ...), so a
second collection never overwrites the first. Each file is written under a
temporary name and renamed into place, and ends read-only (0444, folders 0555).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import EnvironmentProblem, InternalError
from .publish.fsops import DIRECTORY_FLAGS, READ_FLAGS

log = logging.getLogger(__name__)

MAX_DEPTH = 64
# Each workspace gets an equal share of the run's hash budget, and never more than this.
WORKSPACE_HASH_BYTES = 256 * 1024**2
RUN_HASH_BYTES = 1024**3
# The supervisor caps a saved log at 64 MiB, so a copy larger than this is not a log the orchestrator wrote.
COPY_LIMIT_BYTES = 256 * 1024**2
# Guards the search for a free `evidence-N` name against a run folder filled with such names.
MAX_COLLECTIONS = 1000
CHUNK_BYTES = 1024**2

FILE_MODE = 0o444
FOLDER_MODE = 0o555
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class EvidenceSource:
    agent: str
    # The agent's host workspace folder; everything in it may be hostile.
    workspace: Path
    # The agent's saved output; it may be missing.
    log_path: Path
    # The agent's saved, redacted inspect JSON; it may be missing.
    inspect_path: Path


@dataclass(frozen=True)
class EvidenceFile:
    # Relative to the evidence folder.
    path: str
    sha256: str
    size: int
    # The evidence folder's name inside the run folder: "evidence", or "evidence-2" and up for later collections.
    folder: str = "evidence"


# Listing a workspace


@dataclass
class _Frame:
    parts: tuple[str, ...]
    fd: int
    names: Iterator[str]


@dataclass
class _Walk:
    max_entries: int
    max_depth: int
    max_hash_bytes: int
    deadline: float | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    truncation: str | None = None
    hashed_bytes: int = 0

    def problem(self, entry: dict[str, Any], problem: str) -> None:
        entry["problem"] = problem
        self.problems.append({"path": entry["path"], "problem": problem})

    def truncate(self, reason: str) -> None:
        # The first reason is kept: later ones follow from it.
        if self.truncation is None:
            self.truncation = reason

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def list_workspace(
    root: Path,
    *,
    max_entries: int = 100_000,
    max_hash_bytes: int = WORKSPACE_HASH_BYTES,
    deadline: float | None = None,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Describe every entry of a workspace without following a symlink or blocking on a special file.

    Each entry has path, type, size, mode (octal string), uid, gid, mtime (UTC
    ISO 8601, None when out of range), mtime_ns, nlink, hard_link, setuid and
    setgid. Three fields are None except on one kind of entry: link_target on
    symlinks, device ("major:minor") on device nodes and sha256 on hashed
    regular files. An entry's note gives the reason a file is not
    hashed or a folder not listed, and its problem the reason it could not be read.
    Names that are not valid UTF-8 appear with their bytes escaped as \\xNN,
    and path_hex then contains the raw bytes.

    `deadline` is a `time.monotonic()` instant. Past it, past `max_entries`
    entries (the root included) or below `max_depth` folders, the rest is not
    listed and `truncated` is true. At most `max_hash_bytes` bytes are read in
    total. Returns {"entries", "truncated", "truncation", "problems",
    "hashed_bytes"}, where problems lists every entry that could not be read.
    """
    walk = _Walk(max_entries=max_entries, max_depth=max_depth, max_hash_bytes=max_hash_bytes, deadline=deadline)
    root_entry = _blank_entry(())
    walk.entries.append(root_entry)
    try:
        root_fd = os.open(root, DIRECTORY_FLAGS)
    except OSError as exc:
        walk.problem(root_entry, _open_problem(exc, "the workspace"))
        return _listing(walk)

    try:
        _describe(root_entry, os.fstat(root_fd))
    except OSError as exc:
        walk.problem(root_entry, f"cannot be inspected ({exc.strerror})")
    stack = [_Frame((), root_fd, _list_names(walk, root_fd, root_entry))]
    try:
        _walk_frames(walk, stack)
    finally:
        for frame in stack:
            os.close(frame.fd)
    return _listing(walk)


def _listing(walk: _Walk) -> dict[str, Any]:
    return {
        "entries": walk.entries,
        "truncated": walk.truncation is not None,
        "truncation": walk.truncation,
        "problems": walk.problems,
        "hashed_bytes": walk.hashed_bytes,
    }


def _walk_frames(walk: _Walk, stack: list[_Frame]) -> None:
    """Walk depth first, holding one descriptor per open folder, so at most max_depth + 1 are open."""
    while stack:
        if walk.deadline_passed():
            walk.truncate("the deadline passed; the remaining entries are not listed")
            return
        frame = stack[-1]
        name = next(frame.names, None)
        if name is None:
            stack.pop()
            os.close(frame.fd)
            continue

        if len(walk.entries) >= walk.max_entries:
            walk.truncate(f"more than {walk.max_entries} entries; the remaining entries are not listed")
            return
        child = _visit(walk, frame, name)
        if child is not None:
            stack.append(child)


def _list_names(walk: _Walk, folder_fd: int, entry: dict[str, Any]) -> Iterator[str]:
    """Return the names in a folder, sorted by their bytes, reading at most one more than the entry budget."""
    budget = walk.max_entries - len(walk.entries) + 1
    names: list[str] = []
    try:
        with os.scandir(folder_fd) as listing:
            for item in listing:
                names.append(item.name)
                if len(names) >= budget:
                    break
    except OSError as exc:
        walk.problem(entry, f"cannot be listed ({exc.strerror})")
    names.sort(key=os.fsencode)
    return iter(names)


def _visit(walk: _Walk, frame: _Frame, name: str) -> _Frame | None:
    """Record one entry; return the frame of a folder to descend into, or None."""
    parts = (*frame.parts, name)
    entry = _blank_entry(parts)
    walk.entries.append(entry)
    try:
        info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
    except FileNotFoundError:
        walk.problem(entry, "vanished during the walk")
        return None
    except OSError as exc:
        walk.problem(entry, f"cannot be inspected ({exc.strerror})")
        return None
    _describe(entry, info)

    if stat.S_ISLNK(info.st_mode):
        _read_link(walk, frame.fd, name, entry)
    elif stat.S_ISREG(info.st_mode):
        _hash_file(walk, frame.fd, name, info, entry)
    elif stat.S_ISDIR(info.st_mode):
        return _open_folder(walk, frame.fd, parts, info, entry)
    return None


def _read_link(walk: _Walk, folder_fd: int, name: str, entry: dict[str, Any]) -> None:
    try:
        entry["link_target"] = _json_text(os.readlink(name, dir_fd=folder_fd))
    except OSError as exc:
        walk.problem(entry, f"symlink cannot be read ({exc.strerror})")


def _open_folder(
    walk: _Walk, parent_fd: int, parts: tuple[str, ...], info: os.stat_result, entry: dict[str, Any]
) -> _Frame | None:
    if len(parts) >= walk.max_depth:
        walk.truncate(f"folders nested deeper than {walk.max_depth} levels are not listed")
        entry["note"] = f"not listed: deeper than {walk.max_depth} levels"
        return None
    try:
        fd = os.open(parts[-1], DIRECTORY_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        walk.problem(entry, _open_problem(exc, "the folder"))
        return None

    try:
        opened = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        walk.problem(entry, f"cannot be inspected ({exc.strerror})")
        return None
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        os.close(fd)
        walk.problem(entry, "was replaced by another folder during the walk; not listed")
        return None
    return _Frame(parts, fd, _list_names(walk, fd, entry))


def _hash_file(walk: _Walk, folder_fd: int, name: str, info: os.stat_result, entry: dict[str, Any]) -> None:
    """Hash a regular file, unless it would pass the byte budget or the deadline."""
    allowed = walk.max_hash_bytes - walk.hashed_bytes
    if info.st_size > allowed:
        entry["note"] = "not hashed: over the cap"
        return
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=folder_fd)
    except OSError as exc:
        walk.problem(entry, _open_problem(exc, "the file"))
        return

    read = 0
    try:
        opened = os.fstat(fd)
        # O_NONBLOCK kept the open from blocking if a FIFO or device took the file's place, and fstat shows which.
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            walk.problem(entry, "was replaced by another entry during the walk; not hashed")
            return
        digest = hashlib.sha256()
        while True:
            if walk.deadline_passed():
                entry["note"] = "not hashed: the deadline passed"
                walk.truncate("the deadline passed; the remaining entries are not listed")
                return
            # One byte past the budget shows that a file grew beyond it while being read.
            chunk = os.read(fd, min(CHUNK_BYTES, allowed - read + 1))
            if not chunk:
                break
            read += len(chunk)
            if read > allowed:
                entry["note"] = "not hashed: over the cap"
                return
            digest.update(chunk)
        entry["sha256"] = digest.hexdigest()
    except OSError as exc:
        walk.problem(entry, f"cannot be read ({exc.strerror})")
    finally:
        walk.hashed_bytes += read
        os.close(fd)


def _open_problem(exc: OSError, subject: str) -> str:
    if exc.errno == errno.ENOENT:
        return "vanished during the walk"
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{subject} became a symlink or another type of entry during the walk; not followed"
    return f"cannot be opened ({exc.strerror})"


def _blank_entry(parts: tuple[str, ...]) -> dict[str, Any]:
    path = "/".join(parts) or "."
    text = _json_text(path)
    raw = os.fsencode(path)
    return {
        "path": text,
        "path_hex": None if text.encode("utf-8") == raw else raw.hex(),
        "type": None,
        "size": None,
        "mode": None,
        "uid": None,
        "gid": None,
        "mtime": None,
        "mtime_ns": None,
        "nlink": None,
        "hard_link": False,
        "setuid": False,
        "setgid": False,
        "link_target": None,
        "device": None,
        "sha256": None,
        "note": None,
        "problem": None,
    }


def _describe(entry: dict[str, Any], info: os.stat_result) -> None:
    mode = info.st_mode
    entry["type"] = _entry_type(mode)
    entry["size"] = info.st_size
    entry["mode"] = f"{stat.S_IMODE(mode):04o}"
    entry["uid"] = info.st_uid
    entry["gid"] = info.st_gid
    entry["mtime"] = _timestamp(info.st_mtime)
    entry["mtime_ns"] = info.st_mtime_ns
    entry["nlink"] = info.st_nlink
    entry["hard_link"] = not stat.S_ISDIR(mode) and info.st_nlink > 1
    entry["setuid"] = bool(mode & stat.S_ISUID)
    entry["setgid"] = bool(mode & stat.S_ISGID)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry["device"] = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


def _entry_type(mode: int) -> str:
    kinds = (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char-device"),
        (stat.S_ISBLK, "block-device"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return "unknown"


def _timestamp(seconds: float) -> str | None:
    # An agent can set any mtime, including one that datetime cannot represent.
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def _json_text(name: str) -> str:
    """Return a file name as valid UTF-8 text, with each byte that is not UTF-8 written as \\xNN."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        # A surrogate that os.fsdecode never produces, so it did not come from a file name.
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


# Writing the evidence folder


class _EvidenceWriter:
    """A writer of files into a fresh evidence folder, by descriptor, each under a temporary name renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd = os.open(folder, DIRECTORY_FLAGS)
        self.subfolders: dict[str, int] = {}
        self.files: list[EvidenceFile] = []

    def make_folder(self, name: str) -> None:
        os.mkdir(name, 0o700, dir_fd=self.fd)
        self.subfolders[name] = os.open(name, DIRECTORY_FLAGS, dir_fd=self.fd)

    def write(self, subfolder: str | None, name: str, chunks: Iterable[bytes]) -> EvidenceFile:
        folder_fd = self.fd if subfolder is None else self.subfolders[subfolder]
        temporary = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(temporary, _WRITE_FLAGS, 0o600, dir_fd=folder_fd)
        try:
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
                    digest.update(chunk)
                    size += len(chunk)
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            _unlink_quietly(temporary, folder_fd)
            raise

        relative = name if subfolder is None else f"{subfolder}/{name}"
        written = EvidenceFile(path=relative, sha256=digest.hexdigest(), size=size, folder=self.folder.name)
        self.files.append(written)
        return written

    def write_json(self, subfolder: str | None, name: str, data: object) -> EvidenceFile:
        text = json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
        return self.write(subfolder, name, [text.encode("ascii")])

    def close(self) -> None:
        """Make every folder read-only, flush the folders' entries to disk and close them."""
        for fd in (*self.subfolders.values(), self.fd):
            try:
                os.fchmod(fd, FOLDER_MODE)
                os.fsync(fd)
            except OSError as exc:
                log.warning("could not make an evidence folder in %s read-only: %s", self.folder, exc.strerror)
            finally:
                os.close(fd)
        self.subfolders.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(name: str, folder_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=folder_fd)
    except OSError as exc:
        log.warning("could not remove the temporary evidence file %s: %s", name, exc.strerror)


def _json_safe(value: object) -> object:
    """Return `value` as plain JSON data: names that are not UTF-8 escaped, and odd floats and objects as text."""
    if isinstance(value, str):
        return _json_text(value)
    if isinstance(value, bool | int | None):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_json_text(str(key)): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return _json_text(str(value))


def _make_evidence_folder(run_dir: Path) -> Path:
    """Create `evidence`, or the first free `evidence-N`, so that no collection overwrites another."""
    for number in range(1, MAX_COLLECTIONS + 1):
        folder = run_dir / ("evidence" if number == 1 else f"evidence-{number}")
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        return folder
    raise EnvironmentProblem(
        f"{run_dir} already contains {MAX_COLLECTIONS} evidence folders; move some of them away and collect again"
    )


# Copying the saved logs and inspect output


def _copy_file(
    writer: _EvidenceWriter, subfolder: str, name: str, source: Path, deadline: float
) -> tuple[EvidenceFile | None, str]:
    """Copy `source` into the evidence without following a symlink; return the copy and what happened."""
    try:
        fd = os.open(source, READ_FLAGS)
    except FileNotFoundError:
        return None, f"missing: {source} does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"not copied: {source} is a symlink to {_link_target(source)}, which is not followed"
        return None, f"not copied: {source} cannot be opened ({exc.strerror})"

    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, f"not copied: {source} is a {_entry_type(info.st_mode)}, not a regular file"
        notes: list[str] = []
        copied = writer.write(subfolder, name, _read_chunks(fd, deadline, notes))
        return copied, "; ".join(notes) or "copied"
    finally:
        os.close(fd)


def _read_chunks(fd: int, deadline: float, notes: list[str]) -> Iterator[bytes]:
    """Yield a file's bytes; a read error, the copy limit or the deadline ends the copy with a note."""
    copied = 0
    while True:
        if copied >= COPY_LIMIT_BYTES:
            notes.append(f"copy truncated at the {COPY_LIMIT_BYTES}-byte limit")
            return
        if time.monotonic() >= deadline:
            notes.append(f"copy truncated after {copied} bytes: the deadline passed")
            return
        try:
            chunk = os.read(fd, min(CHUNK_BYTES, COPY_LIMIT_BYTES - copied))
        except OSError as exc:
            notes.append(f"copy truncated after {copied} bytes: reading failed ({exc.strerror})")
            return
        if not chunk:
            return
        copied += len(chunk)
        yield chunk


def _link_target(path: Path) -> str:
    try:
        return _json_text(os.readlink(path))
    except OSError as exc:
        return f"an unreadable target ({exc.strerror})"


# Collecting


def collect_evidence(
    run_dir: Path,
    sources: Sequence[EvidenceSource],
    violations: Sequence[dict[str, Any]],
    *,
    deadline_seconds: float = 60.0,
    max_hash_bytes: int = RUN_HASH_BYTES,
    max_entries: int = 100_000,
) -> list[EvidenceFile]:
    """Write the evidence of a stopped run into a new evidence folder; return each file written with its sha256.

    Writes violations.json first. Then, per agent, it writes copies of the saved
    output and inspect data as output.log and inspect.json, skipping a missing or
    unsafe source, and the workspace listing as workspace.json. Last comes
    collection.json, which records what was skipped or truncated and how long
    the collection took. Call it only after every container of the run has
    stopped. Raises EnvironmentProblem when the evidence cannot be written.
    """
    _check_agent_names(sources)
    started = time.monotonic()
    deadline = started + deadline_seconds
    try:
        folder = _make_evidence_folder(run_dir)
        writer = _EvidenceWriter(folder)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot create an evidence folder in {run_dir}: {exc.strerror}; make the run folder writable"
        ) from exc

    try:
        writer.write_json(None, "violations.json", list(violations))
        report = _collect_agents(writer, sources, deadline=deadline, max_hash_bytes=max_hash_bytes,
                                 max_entries=max_entries)
        report["deadline_seconds"] = deadline_seconds
        report["seconds"] = round(time.monotonic() - started, 3)
        writer.write_json(None, "collection.json", report)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot write the evidence into {folder}: {exc.strerror}; free disk space or fix the folder's "
            "permissions, then collect again (the next collection goes into a new folder)"
        ) from exc
    finally:
        writer.close()

    log.info("saved %d evidence file(s) in %s in %.2f s", len(writer.files), folder, time.monotonic() - started)
    return writer.files


def _check_agent_names(sources: Sequence[EvidenceSource]) -> None:
    # The manifest allows only lowercase letters, digits and '-', so anything else here is a bug upstream.
    seen: set[str] = set()
    for source in sources:
        name = source.agent
        if not name or name in (".", "..") or "/" in name or "\0" in name or name in seen or name.startswith("."):
            raise InternalError(f"agent name {name!r} is empty, repeated or not a plain folder name; report this bug")
        seen.add(name)


def _collect_agents(
    writer: _EvidenceWriter,
    sources: Sequence[EvidenceSource],
    *,
    deadline: float,
    max_hash_bytes: int,
    max_entries: int,
) -> dict[str, Any]:
    agents: dict[str, dict[str, Any]] = {}

    # The copies are small and matter most, so they come before any workspace walk can use up the time.
    for source in sources:
        writer.make_folder(source.agent)
        _, log_note = _copy_file(writer, source.agent, "output.log", source.log_path, deadline)
        _, inspect_note = _copy_file(writer, source.agent, "inspect.json", source.inspect_path, deadline)
        agents[source.agent] = {"output.log": log_note, "inspect.json": inspect_note}
        for note in (log_note, inspect_note):
            if note != "copied":
                log.warning("agent %s: evidence %s", source.agent, note)

    # Each workspace gets an equal share of the time and bytes left, so one huge workspace cannot starve the rest.
    hash_bytes_left = max_hash_bytes
    for index, source in enumerate(sources):
        agents_left = len(sources) - index
        now = time.monotonic()
        listing = list_workspace(
            source.workspace,
            max_entries=max_entries,
            max_hash_bytes=min(WORKSPACE_HASH_BYTES, hash_bytes_left // agents_left),
            deadline=now + max(0.0, deadline - now) / agents_left,
        )
        hash_bytes_left -= listing["hashed_bytes"]
        writer.write_json(source.agent, "workspace.json", {"agent": source.agent, "workspace": str(source.workspace),
                                                           **listing})
        agents[source.agent]["workspace.json"] = _listing_summary(listing)
        if listing["truncated"] or listing["problems"]:
            log.warning(
                "agent %s: workspace listing has %d problem(s)%s",
                source.agent, len(listing["problems"]),
                f", truncated: {listing['truncation']}" if listing["truncated"] else "",
            )

    return {"folder": writer.folder.name, "agents": agents, "deadline_passed": time.monotonic() >= deadline}


def _listing_summary(listing: dict[str, Any]) -> dict[str, Any]:
    return {
        "entries": len(listing["entries"]),
        "problems": len(listing["problems"]),
        "truncated": listing["truncated"],
        "truncation": listing["truncation"],
        "hashed_bytes": listing["hashed_bytes"],
    }
