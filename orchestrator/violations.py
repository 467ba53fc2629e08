"""Violations: what the safety monitor reports, and what the run's policy does about each.

A violation names its kind, the agent, the path or setting involved and the
evidence. The manifest's `policy` maps each kind to an action. A kind it leaves
out stops the whole run, because the safe default for an unexpected event is to
stop and keep the evidence.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .manifest import PolicyAction, ViolationKind
from .results import printable

KINDS: tuple[str, ...] = get_args(ViolationKind)
ACTIONS: tuple[str, ...] = get_args(PolicyAction)
DEFAULT_ACTION: PolicyAction = "shutdown"

WRITE_CONFLICT = "write-conflict"
CLAIM_VIOLATION = "claim-violation"
ESCAPE_ATTEMPT = "escape-attempt"
QUOTA_EXCEEDED = "quota-exceeded"
TAMPERING = "tampering"
POSTURE_DRIFT = "posture-drift"
MONITOR_FAILURE = "monitor-failure"
EGRESS_DENIED = "egress-denied"
EGRESS_LIMIT = "egress-limit"
BROKER_FAILURE = "broker-failure"
# Kinds whose default is not to stop the run. A request to a host off the allowlist is refused by the
# broker already, and real CLIs probe hosts for telemetry and updates, so it is recorded and shown.
DEFAULT_ACTIONS: dict[str, PolicyAction] = {EGRESS_DENIED: "warn"}

Action = Literal["shutdown", "stop-agent", "warn"]


def full_policy(policy: Mapping[Any, str]) -> dict[str, str]:
    """Return the action for every kind: the manifest's where it sets one, else the kind's default."""
    return {kind: policy.get(kind, DEFAULT_ACTIONS.get(kind, DEFAULT_ACTION)) for kind in KINDS}


@dataclass(frozen=True)
class Violation:
    kind: str
    agent: str
    # The workspace path (relative to the workspace) or the container setting involved.
    subject: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # On the monotonic clock, so the time to stop can be measured from here.
    detected_at: float = field(default_factory=time.monotonic)
    detected_wall: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "agent": self.agent,
            "subject": self.subject,
            "detail": self.detail,
            "evidence": self.evidence,
            "detected_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.detected_wall))
            + f".{int(self.detected_wall % 1 * 1000):03d}Z",
        }

    def describe(self) -> str:
        # Tampering and drift are done to an agent's container, not by the agent.
        relation = "on the container of agent" if self.kind in (TAMPERING, POSTURE_DRIFT) else "by agent"
        repeated = not self.subject or self.detail.startswith(self.subject)
        # Paths and details come from the agent, so they are escaped before they reach a terminal.
        subject = "" if repeated else f" {printable(self.subject)}:"
        return f"{self.kind} {relation} {self.agent}:{subject} {printable(self.detail)}"
