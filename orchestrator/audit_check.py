"""`orchestrate audit verify`: the audit log's hash chain, and its head against result.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .audit import verify
from .errors import InputError


def check_run_log(target: Path) -> tuple[bool, str]:
    """Verify a run's audit log; return whether it is intact and a message for the user."""
    log_path = target / "audit.jsonl" if target.is_dir() else target
    if not log_path.is_file():
        raise InputError(f"{log_path} not found; give a run folder such as runs/<run-id>")

    report = verify(log_path)
    if not report.ok:
        return False, f"{log_path}: {report.problem}"

    # The chain alone cannot catch a log rewritten from the edit onwards; the head kept in result.json can.
    result_path = log_path.parent / "result.json"
    if result_path.is_file():
        expected = json.loads(result_path.read_text(encoding="utf-8")).get("audit_head")
        actual = hashlib.sha256(log_path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]).hexdigest()
        if expected and expected != actual:
            return False, (
                f"{log_path}: the last record's hash {actual[:16]} differs from audit_head {expected[:16]} "
                f"in {result_path}; the log was rewritten"
            )
    return True, f"{log_path}: intact, {report.records} records from run-start to run-end"
