"""Warn-policy violation lines held back while a terminal is attached, and the line that replaces them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.attached_log import ACTION_FIELD, hold_warnings, release_warnings

LOGGER = "orchestrator.test_attached_log"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield text
    logger.handlers[:] = []


def _violation(action: str, kind: str) -> None:
    logging.getLogger(LOGGER).warning("violation: %s", kind, extra={ACTION_FIELD: action, "violation_kind": kind})


def test_warn_violations_held_others_shown(stream: io.StringIO) -> None:
    held = hold_warnings(LOGGER)
    _violation("warn", "egress-denied")
    _violation("warn", "egress-denied")
    _violation("shutdown", "escape-attempt")
    logging.getLogger(LOGGER).warning("the engine's event stream reconnected")

    shown = stream.getvalue()
    assert "egress-denied" not in shown
    assert "escape-attempt" in shown
    assert "reconnected" in shown
    assert held.counts == {"egress-denied": 2}


def test_summary_names_count_kind_and_audit_log(stream: io.StringIO) -> None:
    held = hold_warnings(LOGGER)
    _violation("warn", "egress-denied")
    _violation("warn", "write-conflict")

    line = held.summary(Path("runs/r1"))

    assert line is not None
    assert line.startswith("2 warn-level violation(s)")
    assert "1 egress-denied, 1 write-conflict" in line
    assert "runs/r1/audit.jsonl" in line


def test_nothing_held_means_no_summary(stream: io.StringIO) -> None:
    held = hold_warnings(LOGGER)
    _violation("stop-agent", "quota-exceeded")

    assert held.summary(Path("runs/r1")) is None


def test_release_shows_later_warnings(stream: io.StringIO) -> None:
    held = hold_warnings(LOGGER)
    release_warnings(held, LOGGER)
    _violation("warn", "egress-denied")

    assert "egress-denied" in stream.getvalue()
    assert held.counts == {}


def test_two_handlers_count_once(stream: io.StringIO) -> None:
    second = io.StringIO()
    logging.getLogger(LOGGER).addHandler(logging.StreamHandler(second))
    held = hold_warnings(LOGGER)
    _violation("warn", "egress-denied")

    assert held.counts == {"egress-denied": 1}
    assert second.getvalue() == ""
