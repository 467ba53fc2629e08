"""`orchestrate publish`: publish the workspaces of a recorded run again.

Only agents that exited cleanly in the run are published, as during the run.
The others are checked and their findings reported, unless `force` is set. A
republish is recorded in an audit log of its own, `audit-publish-<time>.jsonl`
in the run folder, because the run's own log ends with its run-end record.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .errors import InputError
from .plan import RUN_ID_PATTERN, AgentPlan, RunPlan
from .publish import PublishLimits, PublishReport, PublishRequest, check_workspace, publish_agent
from .status import is_active

# Each violation record is flushed to disk; an agent that plants 100,000 bad files gets a summary record.
MAX_AUDITED_FINDINGS = 1000
# States in which the agent's container exited by itself with code 0.
CLEAN_STATES = ("succeeded", "violation")


def publish_run(runs_root: Path, run_id: str, agent: str | None, *, force: bool = False) -> list[PublishReport]:
    """Publish one agent (or every agent) of a run, from the plan and result saved in its run folder."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from the run's summary or from {runs_root}/")
    run_dir = runs_root / run_id
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise InputError(f"{plan_path} not found; check the run id, or pass --runs-dir with the runs folder")
    plan = RunPlan.model_validate_json(plan_path.read_text(encoding="utf-8"))
    # While the run is active its agents still write their workspaces (a shell's user included), and the
    # run publishes them itself at their exit, so publishing now would copy half-written files.
    if is_active(run_dir):
        raise InputError(f"run {run_id} is still running; wait for it to end, or stop it with "
                         f"`orchestrate stop {run_id}`, then publish")

    agents = [item for item in plan.agents if agent is None or item.name == agent]
    if not agents:
        names = ", ".join(item.name for item in plan.agents)
        raise InputError(f"run {run_id} has no agent '{agent}'; its agents are: {names}")

    outcomes = _agent_outcomes(run_dir)
    # With a random tag, two republishes in the same second get logs of their own.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    with AuditLog.create(run_dir / f"audit-publish-{stamp}.jsonl", run_id=plan.run_id) as audit:
        audit.append("run-start", action="publish", agents=[item.name for item in agents], force=force)
        reports = [_publish_one(plan, item, outcomes.get(item.name), force=force, audit=audit) for item in agents]
        audit.append("run-end", findings=sum(len(report.findings) for report in reports))
    return reports


def _agent_outcomes(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {item["name"]: item for item in result.get("agents", []) if isinstance(item, dict) and "name" in item}


def _publish_one(
    plan: RunPlan, agent: AgentPlan, outcome: dict[str, Any] | None, *, force: bool, audit: AuditLog
) -> PublishReport:
    request = publish_request(plan, agent)
    clean = outcome is not None and outcome.get("exit_code") == 0 and outcome.get("state") in CLEAN_STATES
    if not clean and not force:
        report = check_workspace(request)
        state = "unknown (no result.json)" if outcome is None else outcome.get("state")
        report.notices.append(
            f"not published: the agent's run state is {state}; pass --force to publish its workspace anyway"
        )
    else:
        report = publish_agent(request)

    audit_report(audit.append, agent.name, report)
    return report


def audit_report(append: Callable[..., object], agent: str, report: PublishReport) -> None:
    """Record each published file and each finding of one agent's publish in an audit log."""
    for item in report.published:
        if item.action != "unchanged":
            append("publish", agent=agent, path=item.path, action=item.action, sha256=item.sha256, size=item.size)
    for finding in report.findings[:MAX_AUDITED_FINDINGS]:
        kind = "conflict" if finding.kind == "write-conflict" else "violation"
        append(kind, agent=agent, violation=finding.kind, path=finding.path, detail=finding.detail)
    if len(report.findings) > MAX_AUDITED_FINDINGS:
        more = len(report.findings) - MAX_AUDITED_FINDINGS
        append("violation", agent=agent, violation="more-findings", detail=f"{more} more findings; see the report")


def publish_request(plan: RunPlan, agent: AgentPlan) -> PublishRequest:
    """Build the publisher's request for one agent of a plan."""
    return PublishRequest(
        output=plan.output,
        run_id=plan.run_id,
        run_dir=plan.run_dir,
        manifest_name=plan.manifest_name,
        agent=agent.name,
        workspace=agent.workspace,
        claims=agent.writes,
        shared=[(item.path, item.mode) for item in plan.shared],
        limits=PublishLimits(**agent.publish_limits.model_dump()),
    )
