"""The live display of `orchestrate run`: a table on a terminal, JSON lines for CI.

On a terminal the table (agent, state, elapsed time, files and bytes written,
last event, violations) is redrawn in place twice a second below the log
lines, which are printed above it. Without a terminal the log lines alone are
printed, as before. With `--json` every activity record is one JSON line on
standard output, and the run's result is the last line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import anyio

from .activity import Activity
from .results import printable
from .units import format_size

REDRAW_INTERVAL = 0.5
LAST_EVENT_WIDTH = 40


@dataclass(frozen=True)
class AgentRow:
    agent: str
    state: str
    seconds: float | None
    files: int
    bytes: int
    last_event: str
    violations: int


Snapshot = Callable[[], list[AgentRow]]


def render_table(rows: list[AgentRow]) -> list[str]:
    header = ("AGENT", "STATE", "ELAPSED", "FILES", "BYTES", "VIOLATIONS", "LAST EVENT")
    lines = [header]
    for row in rows:
        elapsed = "-" if row.seconds is None else f"{row.seconds:.1f}s"
        last = printable(row.last_event)
        if len(last) > LAST_EVENT_WIDTH:
            last = last[:LAST_EVENT_WIDTH - 3] + "..."
        lines.append((row.agent, row.state, elapsed, str(row.files), format_size(row.bytes), str(row.violations), last))
    widths = [max(len(line[index]) for line in lines) for index in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]


class LiveTable:
    """Redraws the agents' table in place on a terminal; log lines go above it."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._drawn = 0
        self._snapshot: Snapshot | None = None

    def handler(self) -> logging.Handler:
        table = self

        class _AboveTable(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                table.print_above(self.format(record))

        return _AboveTable()

    def print_above(self, line: str) -> None:
        self._erase()
        self.stream.write(line + "\n")
        self._draw()

    async def run(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        try:
            while True:
                self._erase()
                self._draw()
                await anyio.sleep(REDRAW_INTERVAL)
        finally:
            self._erase()
            self._draw()  # The last state stays on screen.
            self._drawn = 0
            self._snapshot = None

    def _erase(self) -> None:
        if self._drawn:
            # Up to the table's first line, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self._snapshot is None:
            return
        lines = render_table(self._snapshot())
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)


class JsonLines:
    """Prints every activity record as one JSON line, for CI logs and other programs."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, activity: Activity) -> None:
        self.stream.write(json.dumps(activity.to_json(), sort_keys=True, default=str) + "\n")
        self.stream.flush()


def elapsed(started: float | None, ended: float | None) -> float | None:
    if started is None:
        return None
    return (ended if ended is not None else time.monotonic()) - started
