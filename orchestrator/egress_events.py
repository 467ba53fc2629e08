"""Turn the egress broker's events into audit records and violations.

The broker reports each request as one event (agent, host, method, path,
status, bytes). It never reports headers, so no record here can hold a key.
"""

from __future__ import annotations

from typing import Any

from .results import printable
from .violations import EGRESS_DENIED, EGRESS_LIMIT, TAMPERING, Violation

# Statuses of requests the broker refused by policy: host not allowed, unknown API, plain HTTP.
POLICY_STATUSES = frozenset({403, 404, 405})
REQUEST_FIELDS = ("kind", "method", "host", "port", "path", "status", "bytes_sent", "bytes_received", "seconds",
                  "denied")


def audit_fields(event: dict[str, Any]) -> dict[str, Any]:
    """Return the fields of an `egress-request` audit record, each one cut and made printable."""
    fields: dict[str, Any] = {"agent": printable(str(event.get("agent", "")))[:63]}
    for key in REQUEST_FIELDS:
        value = event.get(key)
        if isinstance(value, str):
            value = printable(value)[:512]
        # "kind" names the audit record itself, so the request's kind (connect or api) is its "route".
        fields["route" if key == "kind" else key] = value
    return fields


def violation_for(event: dict[str, Any]) -> Violation | None:
    """Return the violation an event stands for, or None for an ordinary request."""
    kind = event.get("event")
    agent = printable(str(event.get("agent", "*")))[:63]
    if kind == "limit":
        return Violation(EGRESS_LIMIT, agent, str(event.get("limit")),
                         f"the egress {event.get('limit')} limit of {event.get('max')} is reached; the broker "
                         "refuses further requests", {"value": event.get("value"), "max": event.get("max")})
    if kind == "foreign-peer":
        return Violation(TAMPERING, agent, "egress network",
                         f"a connection from {printable(str(event.get('peer')))} outside the agent's network reached "
                         "its broker listener")
    if kind == "request" and event.get("denied") and event.get("status") in POLICY_STATUSES:
        host, port, path = event.get("host"), event.get("port"), event.get("path")
        target = f"{host}:{port}" if event.get("kind") == "connect" else f"{host or ''}{path}"
        return Violation(EGRESS_DENIED, agent, printable(str(target))[:255],
                         f"{event.get('method')} {printable(str(target))[:255]} refused: "
                         f"{printable(str(event.get('denied')))[:255]}", audit_fields(event))
    return None
