"""The run's audit log: an append-only, hash-chained JSON Lines file, `runs/<run-id>/audit.jsonl`.

Each line is one JSON object with sorted keys and no spaces. Besides the
caller's fields it contains `seq` (0, 1, 2, ... in file order), `time` (UTC,
ISO 8601 with microseconds), `run`, `kind` and `prev`. `prev` is the SHA-256 of
the previous line's bytes without the newline. For seq 0 it is the SHA-256 of
"orchestrate-audit-v1:" followed by the run id, so the records of one run cannot
be passed off as the start of another. A `run-end` record also contains
`records`, the number of records before it.

`verify` walks the chain and reports the first record that was edited, deleted,
inserted, reordered or taken from another run.

NOTE: the chain has no secret key. Anyone who can write the file can rewrite
every line after an edit and recompute each `prev`, and `verify` will accept the
result. Such a rewrite is caught only by comparing `AuditLog.last_hash` with a
copy stored outside the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath

FORMAT_TAG = "orchestrate-audit-v1:"
RUN_START = "run-start"
RUN_END = "run-end"

# Records that must survive a power failure or a kernel crash, so each is fsync'd.
DURABLE_KINDS = frozenset({RUN_START, RUN_END, "violation", "conflict"})

RESERVED_KEYS = ("seq", "time", "run", "kind", "prev")

# Field names whose mapping value would be an environment with its secret values.
SECRET_FIELDS = frozenset({"env", "environment", "secrets"})


class AuditLog:
    """An open audit log that appends records from any thread. Build one with `AuditLog.create`."""

    def __init__(self, path: Path, run_id: str, fd: int) -> None:
        self.path = path
        self.run_id = run_id
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._seq = 0
        self._last_hash = first_prev(run_id)
        self._ended = False
        self._broken: str | None = None

    @classmethod
    def create(cls, path: Path, *, run_id: str) -> AuditLog:
        """Create the log file and open it for appending.

        Raises FileExistsError when the file exists, because an audit log is never
        overwritten. The parent folder must exist.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise FileExistsError(
                f"audit log {path} already exists; an audit log is never overwritten, so use a new run id"
            ) from exc

        try:
            # Without this, a crash can lose the new directory entry and with it the whole log.
            _fsync_directory(path.parent)
        except OSError:
            os.close(fd)
            raise
        return cls(path, run_id, fd)

    @property
    def last_hash(self) -> str:
        """SHA-256 of the last line written, or the seq-0 `prev` while the log is empty."""
        with self._lock:
            return self._last_hash

    def append(self, kind: str, /, **fields: object) -> dict[str, object]:
        """Write one record and return it as written, with every Path turned into a string.

        Raises ValueError when the kind is empty or a field is named like a reserved key.
        It also raises ValueError for an `env`, `environment` or `secrets` field that is a
        mapping, and for a `records` field on run-end, which the log sets itself. Appending
        to a closed or ended log raises ValueError too. A value that JSON cannot represent
        raises TypeError naming the field.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"the record kind must be a non-empty string, got {kind!r}")
        if kind == RUN_END and "records" in fields:
            raise ValueError("the log sets 'records' itself on a run-end record, so remove 'records' from the call")
        values = {name: _to_json_value(name, value) for name, value in fields.items()}

        with self._lock:
            self._check_writable(kind)
            record: dict[str, object] = {
                **values,
                "seq": self._seq,
                "time": _utc_timestamp(),
                "run": self.run_id,
                "kind": kind,
                "prev": self._last_hash,
            }
            if kind == RUN_END:
                record["records"] = self._seq
            line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")

            self._write_line(line)
            self._seq += 1
            self._last_hash = hashlib.sha256(line).hexdigest()
            self._ended = kind == RUN_END

            # os.write leaves nothing in a user-space buffer, so a crash of this process loses no
            # record. Only fsync makes a record survive a power failure or a kernel crash.
            if kind in DURABLE_KINDS:
                assert self._fd is not None
                os.fsync(self._fd)
        return record

    def close(self) -> None:
        """Close the file. Closing twice is allowed, but appending afterwards raises ValueError."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_writable(self, kind: str) -> None:
        if self._fd is None:
            raise ValueError(f"audit log {self.path} is closed; the {kind!r} record was not written")
        if self._broken is not None:
            raise ValueError(
                f"audit log {self.path} is unusable after a failed write ({self._broken}); "
                "check the disk and run verify on the log"
            )
        if self._ended:
            raise ValueError(
                f"audit log {self.path} already has its run-end record; the {kind!r} record was not written"
            )

    def _write_line(self, line: bytes) -> None:
        # With O_APPEND the kernel seeks to the end and writes in one step, so a line cannot overwrite
        # data appended by another process. The lock keeps this process's lines whole and in seq order.
        assert self._fd is not None
        data = line + b"\n"
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            self._broken = f"write failed: {exc}"
            raise
        if written != len(data):
            # Writing the rest later would not help, because the torn line is already in the file.
            self._broken = f"only {written} of {len(data)} bytes of record seq {self._seq} were written"
            raise OSError(f"audit log {self.path}: {self._broken}; the disk may be full")


def first_prev(run_id: str) -> str:
    """Return the `prev` of a run's seq-0 record, which ties the chain to the run id."""
    return hashlib.sha256((FORMAT_TAG + run_id).encode("utf-8")).hexdigest()


def redact_environment(env: Mapping[str, str]) -> list[str]:
    """Return the variable names of `env`, sorted, for logging an environment without its values."""
    return sorted(env)


def _to_json_value(name: str, value: object) -> object:
    if name in RESERVED_KEYS:
        raise ValueError(f"field {name!r} is reserved in audit records ({', '.join(RESERVED_KEYS)}); rename it")
    if name.lower() in SECRET_FIELDS and isinstance(value, Mapping):
        raise ValueError(
            f"field {name!r} is a mapping and would write secret values to the audit log; "
            "pass redact_environment(...) to log the variable names only"
        )

    try:
        text = json.dumps(value, default=_path_to_str, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"field {name!r} cannot be written as JSON ({exc}); "
            "use str, int, float, bool, None, Path, or lists and dicts of them"
        ) from exc
    return json.loads(text)


def _path_to_str(value: object) -> str:
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"a {type(value).__name__} is not JSON serializable")


def _utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify`. `records`, `run_id` and `ended` describe only the records checked before the problem."""

    ok: bool
    records: int
    problem: str | None
    # 1-based line of the first bad record, or None when the log is intact or empty.
    line: int | None
    run_id: str | None
    ended: bool


@dataclass
class _Chain:
    """State of `verify` after the last record that passed every check."""

    records: int = 0
    run_id: str | None = None
    last_seq: int = -1
    last_kind: str | None = None
    last_hash: str = ""

    def report(self, problem: str | None, line: int | None) -> VerifyReport:
        return VerifyReport(
            ok=problem is None,
            records=self.records,
            problem=problem,
            line=line,
            run_id=self.run_id,
            ended=self.last_kind == RUN_END,
        )


def verify(path: Path, *, require_end: bool = True) -> VerifyReport:
    """Check the log's hash chain line by line and report the first problem.

    With `require_end`, a log whose last record is not run-end is a problem, because
    it may be truncated. An empty file is a problem. Raises FileNotFoundError when
    `path` does not exist.
    """
    chain = _Chain()
    line_number = 0
    with path.open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            problem = _check_line(line_number, raw, chain)
            if problem is not None:
                return chain.report(problem, line_number)

    if chain.records == 0:
        return chain.report("the audit log is empty; the run wrote no record or the file was truncated", None)
    if require_end and chain.last_kind != RUN_END:
        problem = (
            f"line {line_number} (seq {chain.last_seq}): the last record is {chain.last_kind!r}, not run-end; "
            "the log may be truncated or the run still active"
        )
        return chain.report(problem, line_number)
    return chain.report(None, None)


def _check_line(number: int, raw: bytes, chain: _Chain) -> str | None:
    """Return the problem with one line, or None after adding its record to `chain`."""
    line = raw.removesuffix(b"\n")
    if not line:
        return f"line {number} is empty"
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"line {number} is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return f"line {number} is a JSON {type(record).__name__}, not an object"

    seq = record.get("seq")
    has_seq = isinstance(seq, int) and not isinstance(seq, bool)
    where = f"line {number} (seq {seq})" if has_seq else f"line {number}"
    problem = _check_keys(where, record)
    if problem is not None:
        return problem

    problem = _check_chain(where, number, record, chain)
    if problem is not None:
        return problem

    if record["kind"] == RUN_END and record.get("records") != seq:
        return f"{where}: run-end counts {record.get('records')!r} records before it, but its seq is {seq}"
    if chain.last_kind == RUN_END:
        return f"{where}: the record follows run-end; records were appended after the run ended"
    if not raw.endswith(b"\n"):
        return f"{where}: the line has no trailing newline; the last write was cut short"

    chain.records += 1
    chain.run_id = record["run"]
    chain.last_seq = record["seq"]
    chain.last_kind = record["kind"]
    chain.last_hash = hashlib.sha256(line).hexdigest()
    return None


def _check_keys(where: str, record: dict[str, object]) -> str | None:
    missing = [key for key in RESERVED_KEYS if key not in record]
    if missing:
        return f"{where}: the record is missing the key(s) {', '.join(missing)}"

    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"{where}: seq must be an integer, found {seq!r}"
    for key in ("time", "run", "kind", "prev"):
        if not isinstance(record[key], str):
            return f"{where}: {key} must be a string, found {record[key]!r}"
    return None


def _check_chain(where: str, number: int, record: dict[str, object], chain: _Chain) -> str | None:
    seq = record["seq"]
    if seq != chain.last_seq + 1:
        if chain.records == 0:
            return f"{where}: the first record must have seq 0; the records before it were deleted"
        return (
            f"{where}: expected seq {chain.last_seq + 1} after seq {chain.last_seq}; "
            "records were deleted, inserted or reordered"
        )

    run = record["run"]
    if chain.run_id is not None and run != chain.run_id:
        return (
            f"{where}: run is {run!r} but the log belongs to run {chain.run_id!r}; the record was edited or copied in"
        )

    if chain.records == 0:
        if record["prev"] != first_prev(str(run)):
            return (
                f"{where}: prev does not match the start of run {run!r}; "
                "the record was edited or the log continues another run's log"
            )
    elif record["prev"] != chain.last_hash:
        return (
            f"{where}: prev does not match the hash of line {number - 1}; "
            "the record before it was edited, deleted or moved"
        )
    return None
