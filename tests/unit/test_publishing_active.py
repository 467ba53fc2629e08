"""`orchestrate publish` of a run that is still active, such as a shell republished from a second terminal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.plan import RunPlan
from orchestrator.publishing import publish_run
from orchestrator.status import RunLock

from .conftest import manifest_data


def recorded_plan(plan_for: Callable[..., RunPlan], source_dir: Path) -> RunPlan:
    plan = plan_for(manifest_data(source_dir))
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    plan.output.mkdir(parents=True, exist_ok=True)
    for agent in plan.agents:
        agent.workspace.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "plan.json").write_text(plan.model_dump_json(), encoding="utf-8")
    return plan


def test_publish_active_run_rejected(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = recorded_plan(plan_for, source_dir)
    run_lock = RunLock(plan.run_dir)
    try:
        with pytest.raises(InputError, match="still running"):
            publish_run(plan.run_dir.parent, plan.run_id, None, force=True)
    finally:
        run_lock.release()

    assert not list(plan.run_dir.glob("audit-publish-*"))


def test_publish_ended_run_allowed(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = recorded_plan(plan_for, source_dir)
    RunLock(plan.run_dir).release()

    reports = publish_run(plan.run_dir.parent, plan.run_id, None)

    assert len(reports) == 1
    assert len(list(plan.run_dir.glob("audit-publish-*"))) == 1
