"""The run's activity stream: one record per thing worth showing a user or a CI log.

The monitor, the supervisor and the publisher each add records. The live view
and `run --json` (JSON lines) read the same stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Activity:
    # agent-started, agent-exited, file, violation, published, engine, warning, shutdown, run-end
    kind: str
    agent: str | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"time": round(self.time, 3), "kind": self.kind, "agent": self.agent, "message": self.message,
                **({"data": self.data} if self.data else {})}


Listener = Callable[[Activity], None]


def ignore(_activity: Activity) -> None:
    """Drop every record: the listener of a run that shows nothing live."""
