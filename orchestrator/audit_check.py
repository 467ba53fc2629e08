"""`orchestrate audit verify`: the audit log's hash chain, its run id, and its head against an anchor.

The chain alone catches an edited, deleted, inserted or reordered record, but not a
log rewritten from the edit onwards with every hash recomputed. That needs an anchor
kept elsewhere: the head hash stored in result.json, or, stronger, one the user kept
outside the run folder (orchestrate prints it at the end of every run) and passes
with --head.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .audit import verify
from .errors import InputError


def check_run_log(target: Path, *, expected_head: str | None = None) -> tuple[bool, str]:
    """Verify a run's audit log; return whether it is intact and a message for the user."""
    log_path = target / "audit.jsonl" if target.is_dir() else target
    if not log_path.is_file():
        raise InputError(f"{log_path} not found; give a run folder such as runs/<run-id>")

    report = verify(log_path)
    if not report.ok:
        return False, f"{log_path}: {report.problem}"

    run_folder = log_path.parent.name
    if log_path.name == "audit.jsonl" and report.run_id != run_folder:
        return False, f"{log_path}: the log belongs to run {report.run_id}, not to the folder's run {run_folder}"

    actual = hashlib.sha256(log_path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]).hexdigest()
    if expected_head is not None:
        if actual != expected_head:
            return False, f"{log_path}: the last record's hash {actual[:16]} differs from --head {expected_head[:16]}"
        return True, f"{log_path}: intact, {report.records} records, head matches --head"

    if log_path.name != "audit.jsonl":
        return True, f"{log_path}: intact chain of {report.records} records (no anchor; pass --head to check one)"
    anchor = _stored_head(log_path.parent / "result.json")
    if anchor is None:
        return False, (
            f"{log_path}: the chain is intact but result.json or its audit_head is missing, so a rewritten "
            "log cannot be told apart; pass --head with the head printed at the end of the run"
        )
    if anchor != actual:
        return False, (
            f"{log_path}: the last record's hash {actual[:16]} differs from audit_head {anchor[:16]} "
            "in result.json; the log was rewritten"
        )
    return True, f"{log_path}: intact, {report.records} records from run-start to run-end"


def _stored_head(result_path: Path) -> str | None:
    try:
        head = json.loads(result_path.read_text(encoding="utf-8")).get("audit_head")
    except (OSError, ValueError, AttributeError):
        return None
    return head if isinstance(head, str) and head else None
