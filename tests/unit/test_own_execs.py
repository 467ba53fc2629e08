"""Telling the run's own execs from anyone else's, whatever order the engine's events and the ids arrive in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from orchestrator.events import EngineEvent
from orchestrator.monitor import Monitor
from orchestrator.own_execs import OwnExecs
from orchestrator.plan import RunPlan
from orchestrator.runtime import Runtime
from orchestrator.violations import Violation
from orchestrator.workers import Workers

from .conftest import manifest_data


def exec_event(exec_id: str, action: str = "exec_create") -> EngineEvent:
    return EngineEvent(kind="container", action=action, container_id="c" * 64, time_nano=1,
                       attributes={"execID": exec_id}, argument="id -u")


def test_registered_exec_is_own() -> None:
    execs = OwnExecs()
    execs.announce("worker")
    assert execs.created("worker", "mine") == []
    assert execs.judge("worker", exec_event("mine")) == "own"
    assert execs.judge("worker", exec_event("mine", "exec_start")) == "own"


def test_event_before_id_waits_then_is_own() -> None:
    execs = OwnExecs()
    execs.announce("worker")
    assert execs.judge("worker", exec_event("mine")) == "held"
    assert execs.created("worker", "mine") == []


def test_foreign_exec_during_announcement_is_reported() -> None:
    execs = OwnExecs()
    execs.announce("worker")
    outside = exec_event("outside")
    assert execs.judge("worker", outside) == "held"
    assert execs.judge("worker", exec_event("mine")) == "held"
    assert execs.created("worker", "mine") == [outside]


def test_failed_create_releases_held_events() -> None:
    execs = OwnExecs()
    execs.announce("worker")
    outside = exec_event("outside")
    execs.judge("worker", outside)
    assert execs.created("worker", None) == [outside]


def test_overlapping_announcements_hold_until_the_last() -> None:
    execs = OwnExecs()
    execs.announce("worker")
    execs.announce("worker")
    outside = exec_event("outside")
    execs.judge("worker", outside)
    assert execs.created("worker", "first") == []
    assert execs.created("worker", "second") == [outside]


def test_exec_without_announcement_is_foreign() -> None:
    execs = OwnExecs()
    assert execs.judge("worker", exec_event("outside")) == "foreign"


def test_event_without_exec_id_is_foreign() -> None:
    execs = OwnExecs()
    event = EngineEvent(kind="container", action="exec_create", container_id="c", time_nano=1, attributes={})
    assert execs.judge("worker", event) == "foreign"


def test_monitor_reports_only_foreign_execs(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    reported: list[Violation] = []
    monitor = Monitor(plan_for(manifest_data(source_dir)), cast(Runtime, object()), Workers(1),
                      report=reported.append, listener=lambda _activity: None)
    monitor.container_created("reader", "c" * 64)
    monitor.container_started("reader")
    monitor._engine_event(EngineEvent(kind="container", action="start", container_id="c" * 64, time_nano=1,
                                      attributes={}))

    monitor.exec_announced("reader")
    monitor._engine_event(exec_event("outside"))
    monitor._engine_event(exec_event("mine"))
    assert reported == []
    monitor.exec_created("reader", "mine")
    monitor._engine_event(exec_event("mine", "exec_start"))
    assert [item.evidence["attributes"]["execID"] for item in reported] == ["outside"]

    monitor._engine_event(exec_event("later"))
    assert [item.kind for item in reported] == ["tampering", "tampering"]
