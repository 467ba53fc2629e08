"""The execs that the run process itself created, so the monitor can tell them from anyone else's.

The engine's exec_create event can reach the monitor before the create call
has returned the exec's id. So the run process announces an exec before it
creates it. While an announcement of an agent is open, that agent's exec
events wait. Once the id is known, the events that carry it in their execID
attribute (Docker 20.10 sets it on exec_create and exec_start) are the run's own,
and the rest are judged as usual: an exec that anyone else made is tampering,
judged once the create call returns (within milliseconds on an idle engine,
at most the client timeout of 60 s on a stuck one).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from .events import EngineEvent

# Engine actions of an exec that the monitor would otherwise report as tampering.
EXEC_ACTIONS = frozenset({"exec_create", "exec_start"})

Verdict = Literal["own", "held", "foreign"]


class OwnExecs:
    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._announced: defaultdict[str, int] = defaultdict(int)
        self._held: defaultdict[str, list[EngineEvent]] = defaultdict(list)

    def announce(self, agent: str) -> None:
        """Record that the run process is about to create an exec in `agent`'s container."""
        self._announced[agent] += 1

    def created(self, agent: str, exec_id: str | None) -> list[EngineEvent]:
        """Close an announcement with the exec's id, or None when the create failed.

        Returns the held events that are now known not to be the run's own.
        """
        self._announced[agent] = max(self._announced[agent] - 1, 0)
        if exec_id is not None:
            self._ids.add(exec_id)
        still_held = [event for event in self._held.pop(agent, []) if not self._is_own(event)]
        if self._announced[agent]:
            self._held[agent] = still_held
            return []
        return still_held

    def judge(self, agent: str, event: EngineEvent) -> Verdict:
        """Return whether an exec event is the run's own, must wait for an open announcement, or is foreign."""
        if self._is_own(event):
            return "own"
        if self._announced[agent]:
            self._held[agent].append(event)
            return "held"
        return "foreign"

    def _is_own(self, event: EngineEvent) -> bool:
        return event.attributes.get("execID", "") in self._ids
