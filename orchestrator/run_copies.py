"""The source copies of one run: make them from its plan, and record each agent's copy as a commit."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import OrchestrateError
from .layout import STATE_FOLDER
from .plan import RunPlan
from .snapshots import Snapshot, snapshot_ref, take_snapshot
from .source_copy import CopyRequest, CopySource, copy_path, load_copy_source, prepare_copies

log = logging.getLogger(__name__)


def prepare_run_copies(plan: RunPlan) -> CopySource | None:
    """Make every agent's copy when the plan's source mode is `copy`."""
    if plan.source_mode != "copy":
        return None
    # Folders orchestrate writes while agents run; a plain copy leaves them out, as the read-only mount masks them.
    excluded = (plan.run_dir.parent, plan.output / STATE_FOLDER, *(agent.workspace for agent in plan.agents))
    request = CopyRequest(
        run_id=plan.run_id,
        run_dir=plan.run_dir,
        source=plan.source,
        agents=tuple((agent.name, agent.host_uid, agent.host_gid) for agent in plan.agents),
        excluded=excluded,
    )
    return prepare_copies(request)


def agent_author(agent: str) -> tuple[str, str]:
    return f"orchestrate agent {agent}", f"{agent}@orchestrate.invalid"


def snapshot_agent(record: CopySource, *, run_id: str, run_dir: Path, agent: str) -> Snapshot:
    """Record an agent's copy as a commit on top of the starting commit, under the run's snapshot ref."""
    return take_snapshot(
        copy_path(run_dir, agent),
        git_dir=record.git_dir,
        parent=record.base_commit,
        ref=snapshot_ref(run_id, agent),
        author=agent_author(agent),
        message=f"orchestrate run {run_id}: changes of agent {agent}",
    )


def snapshot_run(plan: RunPlan) -> None:
    """Record every agent's copy after the run, so its work survives in git even if the run folder goes."""
    record = load_copy_source(plan.run_dir)
    if record is None:
        return
    for agent in plan.agents:
        if not copy_path(plan.run_dir, agent.name).is_dir():
            continue
        try:
            snapshot = snapshot_agent(record, run_id=plan.run_id, run_dir=plan.run_dir, agent=agent.name)
        except (OrchestrateError, OSError) as exc:
            log.error("agent %s: its copy could not be recorded as a commit: %s", agent.name, exc)
            continue
        log.info("agent %s: its copy is recorded as commit %s (%s)", agent.name, snapshot.commit[:12],
                 snapshot_ref(plan.run_id, agent.name))
