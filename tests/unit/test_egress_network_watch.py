"""The monitor's watch on the agents' egress networks: only the agent and the broker may join one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from orchestrator.events import EngineEvent
from orchestrator.monitor import Monitor
from orchestrator.plan import RunPlan
from orchestrator.runtime import Runtime
from orchestrator.violations import Violation
from orchestrator.workers import Workers

from .conftest import agent, manifest_data

AGENT_ID = "a" * 64
OUTSIDER_ID = "f" * 64


def connect_event(container_id: str, network: str) -> EngineEvent:
    return EngineEvent(kind="network", action="connect", container_id=container_id, time_nano=2,
                       attributes={"container": container_id, "name": network, "type": "bridge"})


def started_monitor(plan: RunPlan, reported: list[Violation]) -> Monitor:
    monitor = Monitor(plan, cast(Runtime, object()), Workers(1), report=reported.append,
                      listener=lambda _activity: None)
    monitor.container_created("caller", AGENT_ID)
    monitor.container_started("caller")
    monitor._engine_event(EngineEvent(kind="container", action="start", container_id=AGENT_ID, time_nano=1,
                                      attributes={}))
    return monitor


def allowlist_plan(plan_for: Callable[..., RunPlan], source_dir: Path) -> RunPlan:
    data = manifest_data(source_dir, agents=[agent("caller", network="allowlist",
                                                   egress={"allow": ["api.example.test:443"]})])
    return plan_for(data)


def test_outsider_joining_egress_network_reported(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = allowlist_plan(plan_for, source_dir)
    assert plan.agents[0].egress is not None
    network = plan.agents[0].egress.network
    reported: list[Violation] = []
    monitor = started_monitor(plan, reported)

    monitor._engine_event(connect_event(OUTSIDER_ID, network))

    assert [(item.kind, item.agent, item.subject) for item in reported] == [("tampering", "caller", "network connect")]
    assert network in reported[0].detail


def test_outsider_on_other_network_ignored(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    reported: list[Violation] = []
    monitor = started_monitor(allowlist_plan(plan_for, source_dir), reported)

    monitor._engine_event(connect_event(OUTSIDER_ID, "bridge"))

    assert reported == []


def test_outsider_joining_during_stop_ignored(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = allowlist_plan(plan_for, source_dir)
    assert plan.agents[0].egress is not None
    reported: list[Violation] = []
    monitor = started_monitor(plan, reported)
    monitor.stopping("caller")

    monitor._engine_event(connect_event(OUTSIDER_ID, plan.agents[0].egress.network))

    assert reported == []
