"""`orchestrate publish`: publish the workspaces of a recorded run again."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError
from .plan import RunPlan
from .publish import PublishReport, publish_agent
from .supervisor import publish_request

RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]*")


def publish_run(runs_root: Path, run_id: str, agent: str | None) -> list[PublishReport]:
    """Publish one agent (or every agent) of a run, from the plan saved in its run folder."""
    if not RUN_ID.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from the run's summary or from {runs_root}/")
    plan_path = runs_root / run_id / "plan.json"
    if not plan_path.is_file():
        raise InputError(f"{plan_path} not found; check the run id, or pass --runs-dir with the runs folder")
    plan = RunPlan.model_validate_json(plan_path.read_text(encoding="utf-8"))

    agents = [item for item in plan.agents if agent is None or item.name == agent]
    if not agents:
        names = ", ".join(item.name for item in plan.agents)
        raise InputError(f"run {run_id} has no agent '{agent}'; its agents are: {names}")
    return [publish_agent(publish_request(plan, item)) for item in agents]
