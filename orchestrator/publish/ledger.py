"""The provenance ledger: one JSON line per published file, appended under its own lock.

`<output>/.orchestrate/ledger.jsonl` records path, run, agent, owner, sha256,
size, mode, time and action of every publish. It is also the index of who
owns each exclusive path and which contributions an append path already has.
A publisher reads new lines while it holds a path's lock, and appends its
record before it releases that lock, so the next holder always reads it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locks import LockRoom, LockTimeout

LEDGER_NAME = "ledger.jsonl"
LEDGER_MODE = 0o664


@dataclass
class Ledger:
    state_dir: Path
    room: LockRoom
    offset: int = 0
    owners: dict[str, str] = field(default_factory=dict)
    # The run of the latest exclusive record of each path, so an old run cannot roll a file back.
    latest_runs: dict[str, str] = field(default_factory=dict)
    contributions: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    _fd: int = -1

    @property
    def path(self) -> Path:
        return self.state_dir / LEDGER_NAME

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LEDGER_MODE)
        try:
            if stat.S_IMODE(os.fstat(self._fd).st_mode) != LEDGER_MODE:
                os.fchmod(self._fd, LEDGER_MODE)
        except PermissionError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def refresh(self) -> None:
        """Read the lines other publishers appended since the last refresh."""
        size = os.fstat(self._fd).st_size
        if size <= self.offset:
            return
        data = os.pread(self._fd, size - self.offset, self.offset)
        end = data.rfind(b"\n") + 1  # A line being written by another process is read next time.
        for line in data[:end].splitlines():
            self._index(line)
        self.offset += end

    def _index(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        path = record.get("path")
        if not isinstance(path, str):
            return
        if record.get("action") == "appended":
            self.contributions.setdefault(path, set()).add((str(record.get("owner")), str(record.get("sha256"))))
        else:
            self.owners.setdefault(path, str(record.get("owner")))
            self.latest_runs[path] = str(record.get("run"))

    def _write_whole(self, line: bytes, before: int) -> None:
        """Append `line` completely or not at all: a full disk must not leave half a record."""
        if before > 0 and os.pread(self._fd, 1, before - 1) != b"\n":
            # A publisher that died mid-write left half a line; end it, so this record stays whole.
            line = b"\n" + line
        try:
            written = os.write(self._fd, line)
        except OSError:
            os.ftruncate(self._fd, before)
            raise
        if written != len(line):
            os.ftruncate(self._fd, before)
            raise OSError(errno.ENOSPC, "the ledger record was cut short; no space left on device")

    def _lock_ledger(self) -> None:
        deadline = time.monotonic() + self.room.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"timed out after {self.room.timeout:g} s waiting for the ledger lock on {self.path}; "
                        f"it is held by {self.room.describe_holder(self.path)}"
                    ) from None
                time.sleep(0.005)

    def owner_of(self, path: str) -> str | None:
        return self.owners.get(path)

    def has_any_contribution(self, path: str) -> bool:
        return bool(self.contributions.get(path))

    def has_contribution(self, path: str, *, owner: str, sha256: str) -> bool:
        """Return whether this owner already appended exactly this content to `path`."""
        return (owner, sha256) in self.contributions.get(path, set())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record with a single write, under the ledger's lock.

        The lock is a flock on the ledger file itself, through the descriptor this
        publisher keeps open: two system calls per record instead of opening a lock file.
        """
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self._lock_ledger()
        try:
            before = os.fstat(self._fd).st_size
            self._write_whole(line, before)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._index(line)
        if before == self.offset:
            # Nothing from other publishers lies between the last refresh and this line, so skip rereading it.
            self.offset += len(line)


def read_records(state_dir: Path) -> Iterator[dict[str, Any]]:
    """Yield every record of the ledger in file order; skip lines that are not JSON objects."""
    try:
        handle = (state_dir / LEDGER_NAME).open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
