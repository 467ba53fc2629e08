"""The audit log: the records it writes, what it rejects, and the tampering `verify` catches.

Tampering is simulated by rewriting lines of a real log. A record is edited by
parsing it, changing a field and dumping it back in the log's own format, so
the line differs from the original only in that field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.audit import AuditLog, first_prev, redact_environment, verify

RUN_ID = "demo-20240101-000000-abcdef"
OTHER_RUN_ID = "demo-20240102-000000-fedcba"
AGENTS = ("reader", "writer", "tester", "linter", "builder")


def write_log(path: Path, run_id: str = RUN_ID) -> Path:
    """Write a finished log of 7 records: run-start, one agent-exit per agent, run-end."""
    with AuditLog.create(path, run_id=run_id) as log:
        log.append("run-start", agents=len(AGENTS))
        for name in AGENTS:
            log.append("agent-exit", agent=name, exit_code=0)
        log.append("run-end", outcome="ok")
    return path


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")


def edit(line: bytes, **changes: Any) -> bytes:
    return dump({**json.loads(line), **changes})


def sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return write_log(tmp_path / "audit.jsonl")


def test_intact_log_verifies(log_path: Path) -> None:
    report = verify(log_path)

    assert report.ok
    assert report.problem is None
    assert report.line is None
    assert report.records == 7
    assert report.run_id == RUN_ID
    assert report.ended


def test_records_are_sorted_compact_lines(log_path: Path) -> None:
    lines = read_lines(log_path)
    first = json.loads(lines[0])

    assert lines[0] == dump(first)
    assert b" " not in lines[0]
    assert first["seq"] == 0
    assert first["run"] == RUN_ID
    assert first["kind"] == "run-start"
    assert first["agents"] == len(AGENTS)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["time"])


def test_prev_chains_line_hashes(log_path: Path) -> None:
    lines = read_lines(log_path)

    assert json.loads(lines[0])["prev"] == sha256(b"orchestrate-audit-v1:" + RUN_ID.encode())
    for previous, line in zip(lines, lines[1:], strict=False):
        assert json.loads(line)["prev"] == sha256(previous)


def test_run_end_counts_records_before_it(log_path: Path) -> None:
    last = json.loads(read_lines(log_path)[-1])

    assert last["kind"] == "run-end"
    assert last["records"] == 6


def test_append_returns_record_as_written(tmp_path: Path) -> None:
    with AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID) as log:
        record = log.append("workspace", agent="reader", path=tmp_path / "ws", files=[1, 2])

    written = json.loads(read_lines(tmp_path / "audit.jsonl")[0])
    assert record == written
    assert written["path"] == str(tmp_path / "ws")


def test_last_hash_is_hash_of_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.create(path, run_id=RUN_ID) as log:
        assert log.last_hash == first_prev(RUN_ID)
        log.append("run-start")
        log.append("agent-exit", agent="reader")
        last_hash = log.last_hash

    assert last_hash == sha256(read_lines(path)[-1])


def test_edited_record_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[3] = edit(lines[3], exit_code=1)
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 5
    assert report.problem is not None
    assert report.problem.startswith("line 5 (seq 4): prev does not match the hash of line 4")
    assert report.records == 4


def test_deleted_middle_line_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    del lines[3]
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 4
    assert report.problem is not None
    assert report.problem.startswith("line 4 (seq 4): expected seq 3 after seq 2")


def test_deleted_run_end_fails_verify(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[:-1])

    report = verify(log_path)

    assert not report.ok
    assert report.line == 6
    assert report.problem is not None
    assert "may be truncated or the run still active" in report.problem
    assert not report.ended


def test_missing_run_end_passes_without_require_end(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[:-1])

    report = verify(log_path, require_end=False)

    assert report.ok
    assert report.records == 6
    assert not report.ended


def test_deleted_tail_before_run_end_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    write_lines(log_path, lines[:4] + lines[-1:])

    report = verify(log_path)

    assert not report.ok
    assert report.line == 5
    assert report.problem is not None
    assert "expected seq 4 after seq 3" in report.problem


def test_run_end_with_wrong_count_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[-1] = edit(lines[-1], records=3)
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 7
    assert report.problem is not None
    assert "run-end counts 3 records before it, but its seq is 6" in report.problem


def test_swapped_lines_fail_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 3
    assert report.problem is not None
    assert "expected seq 2 after seq 1" in report.problem


def test_forged_line_with_next_seq_fails_verify(log_path: Path) -> None:
    # The forged record copies seq and prev from the record it displaces, so the forged line passes every check.
    lines = read_lines(log_path)
    forged = edit(lines[3], agent="intruder")
    lines.insert(3, forged)
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 5
    assert report.problem is not None
    assert "expected seq 4 after seq 3" in report.problem


def test_changed_run_id_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[2] = edit(lines[2], run=OTHER_RUN_ID)
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 3
    assert report.problem is not None
    assert f"run is '{OTHER_RUN_ID}' but the log belongs to run '{RUN_ID}'" in report.problem


def test_spliced_log_of_other_run_fails_verify(tmp_path: Path) -> None:
    ours = read_lines(write_log(tmp_path / "ours.jsonl"))
    theirs = read_lines(write_log(tmp_path / "theirs.jsonl", run_id=OTHER_RUN_ID))
    spliced = tmp_path / "spliced.jsonl"
    write_lines(spliced, ours[:3] + theirs[3:])

    report = verify(spliced)

    assert not report.ok
    assert report.line == 4
    assert report.problem is not None
    assert "belongs to run" in report.problem


def test_log_relabelled_as_other_run_fails_verify(log_path: Path) -> None:
    # Every record claims the other run, but seq 0's prev still ties the chain to the original one.
    write_lines(log_path, [edit(line, run=OTHER_RUN_ID) for line in read_lines(log_path)])

    report = verify(log_path)

    assert not report.ok
    assert report.line == 1
    assert report.problem is not None
    assert f"prev does not match the start of run '{OTHER_RUN_ID}'" in report.problem


def test_log_without_first_record_fails_verify(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[1:])

    report = verify(log_path)

    assert not report.ok
    assert report.line == 1
    assert report.problem is not None
    assert "the first record must have seq 0" in report.problem


def test_record_after_run_end_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    extra = dump(
        {"seq": 7, "time": "2024-01-01T00:00:00.000000Z", "run": RUN_ID, "kind": "note", "prev": sha256(lines[-1])}
    )
    write_lines(log_path, lines + [extra])

    report = verify(log_path, require_end=False)

    assert not report.ok
    assert report.line == 8
    assert report.problem is not None
    assert "follows run-end" in report.problem


def test_invalid_json_line_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[1] = lines[1][:-5]
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 2
    assert report.problem is not None
    assert report.problem.startswith("line 2 is not valid JSON")


def test_record_without_required_key_fails_verify(log_path: Path) -> None:
    lines = read_lines(log_path)
    record = json.loads(lines[1])
    del record["time"]
    lines[1] = dump(record)
    write_lines(log_path, lines)

    report = verify(log_path)

    assert not report.ok
    assert report.line == 2
    assert report.problem == "line 2 (seq 1): the record is missing the key(s) time"


def test_last_line_without_newline_fails_verify(log_path: Path) -> None:
    log_path.write_bytes(log_path.read_bytes().removesuffix(b"\n"))

    report = verify(log_path)

    assert not report.ok
    assert report.line == 7
    assert report.problem is not None
    assert "no trailing newline" in report.problem


def test_empty_file_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog.create(path, run_id=RUN_ID).close()

    report = verify(path, require_end=False)

    assert not report.ok
    assert report.records == 0
    assert report.problem is not None
    assert "empty" in report.problem


def test_verify_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "absent.jsonl")


def test_concurrent_appends_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    thread_count, per_thread = 8, 200
    start = threading.Barrier(thread_count)

    def append_records(log: AuditLog, worker: int) -> None:
        start.wait()
        for index in range(per_thread):
            log.append("agent-output", worker=worker, index=index)

    with AuditLog.create(path, run_id=RUN_ID) as log:
        log.append("run-start")
        threads = [threading.Thread(target=append_records, args=(log, worker)) for worker in range(thread_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.append("run-end")

    report = verify(path)
    seqs = [json.loads(line)["seq"] for line in read_lines(path)]
    assert report.ok, report.problem
    assert report.records == thread_count * per_thread + 2
    assert seqs == list(range(len(seqs)))


@pytest.mark.parametrize("name", ["seq", "time", "run", "kind", "prev"])
def test_reserved_field_rejected(tmp_path: Path, name: str) -> None:
    with AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID) as log:
        with pytest.raises(ValueError, match=f"field '{name}' is reserved"):
            log.append("note", **{name: "forged"})

    assert (tmp_path / "audit.jsonl").read_bytes() == b""


def test_records_field_on_run_end_rejected(tmp_path: Path) -> None:
    with AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID) as log:
        with pytest.raises(ValueError, match="sets 'records' itself on a run-end record"):
            log.append("run-end", records=99)


@pytest.mark.parametrize("name", ["env", "environment", "secrets"])
def test_environment_mapping_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.create(path, run_id=RUN_ID) as log:
        with pytest.raises(ValueError, match=f"field '{name}' is a mapping"):
            log.append("agent-start", **{name: {"API_TOKEN": "s3cret-value"}})

    assert b"s3cret-value" not in path.read_bytes()


def test_redacted_environment_logs_names_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    environment = {"PATH": "/usr/bin", "API_TOKEN": "s3cret-value", "HOME": "/home/agent"}
    with AuditLog.create(path, run_id=RUN_ID) as log:
        log.append("agent-start", env=redact_environment(environment))

    assert redact_environment(environment) == ["API_TOKEN", "HOME", "PATH"]
    assert b"s3cret-value" not in path.read_bytes()


def test_create_rejects_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"earlier run\n")

    with pytest.raises(FileExistsError, match="never overwritten"):
        AuditLog.create(path, run_id=RUN_ID)

    assert path.read_bytes() == b"earlier run\n"


def test_unserializable_field_raises_type_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.create(path, run_id=RUN_ID) as log:
        with pytest.raises(TypeError, match="field 'started'"):
            log.append("note", agent="reader", started={1, 2})
        log.append("run-start")

    assert json.loads(read_lines(path)[0])["seq"] == 0


def test_nan_field_raises_type_error(tmp_path: Path) -> None:
    with AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID) as log:
        with pytest.raises(TypeError, match="field 'ratio'"):
            log.append("note", ratio=float("nan"))


def test_append_after_run_end_rejected(tmp_path: Path) -> None:
    with AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID) as log:
        log.append("run-end")
        with pytest.raises(ValueError, match="already has its run-end record"):
            log.append("note")


def test_append_after_close_rejected(tmp_path: Path) -> None:
    log = AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID)
    log.close()

    with pytest.raises(ValueError, match="is closed"):
        log.append("note")


def test_only_durable_kinds_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog.create(tmp_path / "audit.jsonl", run_id=RUN_ID)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)

    for kind in ("run-start", "agent-output", "violation", "agent-exit", "conflict", "run-end"):
        log.append(kind)
    log.close()

    assert len(synced) == 4
