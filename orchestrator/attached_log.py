"""Hold back warn-policy violation lines while a terminal is attached to an agent.

A warn-level violation (such as a request the egress broker refused while a CLI
probes its update host) is printed as a log line on stderr, which is the same
terminal a full-screen program such as claude is drawing on. Those lines garble
its screen and tell the user nothing they must act on now. While the terminal is
attached they are counted instead, and one line after the session names how many
there were and where the audit log keeps them. Violations that stop an agent or
the run are always printed.
"""

from __future__ import annotations

import logging
from collections import Counter

# The `extra` key the supervisor sets on a violation's log record: the policy action applied to it.
ACTION_FIELD = "violation_action"
COUNTED_FIELD = "held_warning_counted"


class HeldWarnings(logging.Filter):
    """A handler filter that drops warn-policy violation records and counts them by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, ACTION_FIELD, None) != "warn":
            return True
        # The filter sits on every handler, so one record may pass through it more than once.
        if not getattr(record, COUNTED_FIELD, False):
            setattr(record, COUNTED_FIELD, True)
            self.counts[str(getattr(record, "violation_kind", "violation"))] += 1
        return False

    def summary(self, run_dir: object) -> str | None:
        """Return the line to print after the session, or None when nothing was held back."""
        if not self.counts:
            return None
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts.items()))
        return (f"{sum(self.counts.values())} warn-level violation(s) were not shown while the terminal was attached "
                f"({kinds}); they are in {run_dir}/audit.jsonl")


def hold_warnings(logger_name: str = "orchestrator") -> HeldWarnings:
    """Install a `HeldWarnings` filter on every handler of the logger and return it."""
    held = HeldWarnings()
    for handler in logging.getLogger(logger_name).handlers:
        handler.addFilter(held)
    return held


def release_warnings(held: HeldWarnings, logger_name: str = "orchestrator") -> None:
    """Remove the filter again, so later lines (the run's end) print as usual."""
    for handler in logging.getLogger(logger_name).handlers:
        handler.removeFilter(held)
