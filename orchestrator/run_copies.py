"""The source copies of one run: make them from its plan, record each agent's copy as a commit, find them again."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import InputError, OrchestrateError
from .host_git import git, repository_lock
from .layout import STATE_FOLDER
from .plan import RUN_ID_PATTERN, RunPlan
from .snapshots import REF_PREFIX, Snapshot, snapshot_ref, take_snapshot
from .source_copy import CopyRequest, CopySource, copy_path, load_copy_source, prepare_copies
from .status import is_active

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


# Added to an agent's snapshot ref for a snapshot taken while the run is active. The final ref is written only
# from a copy that no agent writes any more, so `merge` never takes a mid-run state for the agent's work.
LIVE_SUFFIX = ".live"


def snapshot_agent(record: CopySource, *, run_id: str, run_dir: Path, agent: str, live: bool = False) -> Snapshot:
    """Record an agent's copy as a commit on top of the starting commit, under the run's snapshot ref."""
    ref = snapshot_ref(run_id, agent)
    return take_snapshot(
        copy_path(run_dir, agent),
        git_dir=record.git_dir,
        parent=record.base_commit,
        ref=ref + LIVE_SUFFIX if live else ref,
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


def load_run(runs_root: Path, run_id: str) -> tuple[RunPlan, CopySource]:
    """Return the plan and the copies record of a finished or running run; raise InputError for a bad run."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from `orchestrate status --runs-dir {runs_root}`")
    run_dir = runs_root / run_id
    try:
        plan = RunPlan.model_validate_json((run_dir / "plan.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"run {run_id} is unknown: {run_dir / 'plan.json'} does not exist; list the runs with "
                         f"`orchestrate status --runs-dir {runs_root}`, or pass --runs-dir") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {run_dir / 'plan.json'}: {exc}") from exc
    record = load_copy_source(run_dir)
    if plan.source_mode != "copy" or record is None:
        raise InputError(f"run {run_id} gave its agents no source copies (its source mode is {plan.source_mode}); "
                         "only runs with `source: {path: ..., mode: copy}` have changes to show or merge")
    return plan, record


def pick_agents(plan: RunPlan, agent: str | None) -> list[str]:
    """Return the agents to act on, in manifest order: all of them, or the one named."""
    names = [item.name for item in plan.agents]
    if agent is None:
        return names
    if agent not in names:
        raise InputError(f"run {plan.run_id} has no agent '{agent}'; its agents are: {', '.join(names)}")
    return [agent]


def agent_commit(plan: RunPlan, record: CopySource, agent: str) -> str:
    """Return the commit of an agent's work: the snapshot taken after the run, or a new one while it runs."""
    ref = snapshot_ref(plan.run_id, agent)
    active = is_active(plan.run_dir)
    if not active:
        completed = git(record.git_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if completed.returncode == 0:
            return completed.stdout.decode().strip()
    if not copy_path(plan.run_dir, agent).is_dir():
        raise InputError(f"agent {agent} of run {plan.run_id} has neither a copy at {copy_path(plan.run_dir, agent)} "
                         f"nor a snapshot {ref} in {record.git_dir}; its changes are gone")
    return snapshot_agent(record, run_id=plan.run_id, run_dir=plan.run_dir, agent=agent, live=active).commit


def remove_snapshot_refs(run_dir: Path, run_id: str) -> list[str]:
    """Delete the snapshot refs a run left in the user's repository; return their names.

    Branches that `orchestrate merge` made stay: the user asked for them.
    """
    record = load_copy_source(run_dir)
    if record is None or record.kind != "git" or not record.git_dir.is_dir():
        return []
    prefix = f"{REF_PREFIX}/{run_id}/"
    with repository_lock(record.git_dir):
        listing = git(record.git_dir, "for-each-ref", "--format=%(refname)", prefix).stdout.decode()
        refs = [line for line in listing.splitlines() if line.startswith(prefix)]
        if refs:
            commands = "".join(f"delete {ref}\n" for ref in refs).encode()
            git(record.git_dir, "update-ref", "--stdin", input_data=commands)
    return refs
