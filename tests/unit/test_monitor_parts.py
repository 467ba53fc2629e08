"""The monitor's fail-closed paths and the live view, without Docker."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests.exceptions

from orchestrator import workspace
from orchestrator.activity import Activity
from orchestrator.liveview import AgentRow, JsonLines, LiveTable, render_table
from orchestrator.monitor import Monitor
from orchestrator.plan import RunPlan
from orchestrator.violations import Violation, full_policy
from orchestrator.workers import Workers
from tests.unit.conftest import agent, manifest_data


class UnreachableEngine:
    """A runtime whose engine is unreachable: every event connection fails."""

    def __init__(self) -> None:
        self.connections = 0

    def event_client(self) -> Any:
        self.connections += 1
        raise requests.exceptions.ConnectionError("connection refused")

    def inspect(self, container_id: str) -> dict[str, Any]:
        raise AssertionError("no container was started")


@pytest.fixture
def plan(plan_for: Callable[..., RunPlan], source_dir: Path) -> RunPlan:
    built = plan_for(manifest_data(source_dir, agents=[agent("alpha", writes=["**"])]))
    workspace.prepare(built)
    return built


def test_monitor_failure_lost_event_stream(plan: RunPlan) -> None:
    engine = UnreachableEngine()
    reported: list[Violation] = []

    async def main() -> None:
        monitor = Monitor(plan, engine, Workers(1), report=reported.append, listener=lambda _item: None)  # type: ignore[arg-type]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                await group.start(monitor.run)
                while not reported:  # noqa: ASYNC110 - the report list is plain state.
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()

    anyio.run(main)
    assert [(item.kind, item.subject) for item in reported] == [("monitor-failure", "engine events")]
    assert engine.connections >= 2


def test_every_kind_defaults_to_shutdown_but_denied_egress() -> None:
    policy = full_policy({"tampering": "warn"})
    assert policy.pop("tampering") == "warn"
    # A host off the allowlist is refused by the broker already, so by default it is only recorded.
    assert policy.pop("egress-denied") == "warn"
    assert set(policy.values()) == {"shutdown"}
    assert len(policy) == 8


def test_table_aligns_and_cuts_events() -> None:
    rows = [
        AgentRow("alpha", "running", 1.25, 3, 2048, "wrote a/b.md", 0),
        AgentRow("beta-long-name", "violation", None, 0, 0, "x" * 100 + "\x1b[2J", 2),
    ]
    lines = render_table(rows)
    assert lines[0].split() == ["AGENT", "STATE", "ELAPSED", "FILES", "BYTES", "VIOLATIONS", "LAST", "EVENT"]
    assert lines[1].index("running") == lines[2].index("violation")
    assert "1.2s" in lines[1] or "1.3s" in lines[1]
    assert "\x1b" not in lines[2]
    assert lines[2].endswith("...")


def test_live_table_redraws_in_place() -> None:
    stream = io.StringIO()
    table = LiveTable(stream)
    state = {"files": 0}

    def snapshot() -> list[AgentRow]:
        return [AgentRow("alpha", "running", 0.5, state["files"], 0, "", 0)]

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(table.run, snapshot)
            await anyio.sleep(0.1)
            table.print_above("orchestrate: a log line")
            state["files"] = 7
            await anyio.sleep(0.6)
            group.cancel_scope.cancel()

    anyio.run(main)
    text = stream.getvalue()
    assert "orchestrate: a log line\n" in text
    # Each redraw moves up over the two lines of the table and clears them.
    assert "\x1b[2F\x1b[J" in text
    assert text.rstrip().splitlines()[-1].split()[:4] == ["alpha", "running", "0.5s", "7"]


def test_json_lines_are_one_record_per_line() -> None:
    stream = io.StringIO()
    lines = JsonLines(stream)
    lines(Activity("violation", "alpha", "two\nlines", {"kind": "tampering"}))
    lines(Activity("published", "beta", "published 1 file(s)"))
    records = stream.getvalue().splitlines()
    assert len(records) == 2
    assert '"kind": "violation"' in records[0]
    assert "two\\nlines" in records[0]
