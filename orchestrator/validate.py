"""`orchestrate validate`: check every security invariant of the running agent containers.

For each running container of a run (or of every run), the engine's inspect
data and the container's own view, read from the host through /proc, are
compared with the run's plan.json. When the run folder is not at hand, they
are compared with the hardening that every plan has. Nothing is executed inside the containers: the
safety monitor of a live run treats an exec as tampering and stops the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .hostpaths import home_directories
from .plan import LABEL_AGENT, LABEL_ROLE, LABEL_RUN, RUN_ID_PATTERN, ContainerSpec, RunPlan
from .procview import ProcUnavailable, read_proc_view
from .runtime.docker import ContainerGone, DockerRuntime
from .validate_checks import Check, check_container

log = logging.getLogger(__name__)

GVISOR_NOTE = (
    "under gVisor the host's /proc shows the sandbox's own processes, not the agent's; the inspect checks still apply"
)


@dataclass(frozen=True)
class ContainerReport:
    """The checks of one container, with what identifies it."""

    container_id: str
    name: str
    run_id: str
    agent: str
    # The plan.json the container was compared with, or None when the checks expected the default hardening.
    plan_path: Path | None
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container_id[:12],
            "name": self.name,
            "run": self.run_id,
            "agent": self.agent,
            "plan": None if self.plan_path is None else str(self.plan_path),
            "ok": not self.failed,
            "checks": [check.to_json() for check in self.checks],
        }


@dataclass(frozen=True)
class ValidationReport:
    run_id: str | None
    containers: list[ContainerReport]
    # Why nothing was checked, when no container was running.
    message: str | None = None
    # Containers that exited while they were being checked.
    exited: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.containers) and not any(report.failed for report in self.containers)

    @property
    def exit_code(self) -> int:
        # Nothing checked is not a pass: a CI step that validates a run that already ended must not go green.
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        statuses = [check.status for report in self.containers for check in report.checks]
        return {status: statuses.count(status) for status in ("pass", "fail", "skip")}

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "ok": self.ok,
            "counts": self.counts(),
            "message": self.message,
            "exited": self.exited,
            "containers": [report.to_json() for report in self.containers],
        }


def validate(runtime: DockerRuntime, *, run_id: str | None, runs_root: Path) -> ValidationReport:
    """Check every running container of `run_id`, or of every run when it is None.

    Raises InputError for a malformed or unknown run id.
    """
    if run_id is not None and not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from `orchestrate status --runs-dir {runs_root}`")

    label = LABEL_RUN if run_id is None else f"{LABEL_RUN}={run_id}"
    # NOTE: the egress broker's container is left out: its settings differ from an agent's by design
    # (a network, no workspace), and no check here describes them yet.
    listed = [
        item for item in runtime.client.api.containers(filters={"label": label})
        if (item.get("Labels") or {}).get(LABEL_ROLE) != "broker"
    ]
    if run_id is not None and not listed and not (runs_root / run_id).is_dir():
        stopped = runtime.client.api.containers(all=True, filters={"label": label})
        if not stopped:
            raise InputError(
                f"run {run_id} is unknown: {runs_root / run_id} does not exist and no container carries its label; "
                f"list the runs with `orchestrate status --runs-dir {runs_root}`, or pass --runs-dir with the "
                "folder that holds the run"
            )

    homes = home_directories()
    plans: dict[str, RunPlan | None] = {}
    reports = []
    exited = []
    for item in sorted(listed, key=_sort_key):
        report = _validate_one(runtime, str(item["Id"]), runs_root=runs_root, plans=plans, homes=homes)
        if report is None:
            exited.append(str(item["Id"])[:12])
        else:
            reports.append(report)

    message = None
    if not reports:
        message = _nothing_running(run_id, runs_root)
    return ValidationReport(run_id=run_id, containers=reports, message=message, exited=exited)


def _sort_key(item: dict[str, Any]) -> tuple[str, str]:
    labels = item.get("Labels") or {}
    return str(labels.get(LABEL_RUN, "")), str(labels.get(LABEL_AGENT, ""))


def _nothing_running(run_id: str | None, runs_root: Path) -> str:
    if run_id is None:
        return ("no running container carries the orchestrate.run label; start a run with "
                "`orchestrate run MANIFEST` and validate it while its agents run")
    return (f"run {run_id} has no running container to check; validate a run while its agents run "
            f"(list them with `orchestrate status --runs-dir {runs_root}`)")


def _validate_one(
    runtime: DockerRuntime,
    container_id: str,
    *,
    runs_root: Path,
    plans: dict[str, RunPlan | None],
    homes: list[Path],
) -> ContainerReport | None:
    """Check one container; None when it exited before its checks could be made."""
    try:
        inspect = runtime.inspect(container_id)
    except ContainerGone:
        return None
    state = inspect.get("State") or {}
    if not state.get("Running"):
        return None

    labels = (inspect.get("Config") or {}).get("Labels") or {}
    run_id = str(labels.get(LABEL_RUN, ""))
    agent = str(labels.get(LABEL_AGENT, ""))
    if run_id not in plans:
        plans[run_id] = _load_plan(runs_root, run_id)
    plan = plans[run_id]
    spec = _agent_spec(plan, agent)

    runtime_name = str((inspect.get("HostConfig") or {}).get("Runtime") or "")
    gvisor = runtime_name.startswith("runsc")
    probe: Any
    if gvisor:
        probe = GVISOR_NOTE
    else:
        try:
            probe = read_proc_view(int(state.get("Pid") or 0), str(inspect.get("Id") or container_id))
        except ProcUnavailable as exc:
            if not _still_running(runtime, container_id):
                return None
            probe = str(exc)

    checks = check_container(inspect, probe, spec, homes=homes, probe_skipped=gvisor)
    plan_path = runs_root / run_id / "plan.json" if spec is not None else None
    return ContainerReport(
        container_id=str(inspect.get("Id") or container_id),
        name=str(inspect.get("Name") or "").lstrip("/"),
        run_id=run_id,
        agent=agent,
        plan_path=plan_path,
        checks=checks,
    )


def _still_running(runtime: DockerRuntime, container_id: str) -> bool:
    try:
        return bool((runtime.inspect(container_id).get("State") or {}).get("Running"))
    except ContainerGone:
        return False


def _load_plan(runs_root: Path, run_id: str) -> RunPlan | None:
    if not run_id or not RUN_ID_PATTERN.fullmatch(run_id):
        return None
    path = runs_root / run_id / "plan.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        return RunPlan.model_validate_json(text)
    except ValueError as exc:
        # A damaged plan must not hide a container: it is checked against the default hardening instead.
        log.warning("the plan %s cannot be read (%s); checking run %s against the default hardening",
                    path, exc, run_id)
        return None


def _agent_spec(plan: RunPlan | None, agent: str) -> ContainerSpec | None:
    if plan is None:
        return None
    for item in plan.agents:
        if item.name == agent:
            return item.container
    return None


MARKS = {"pass": "pass", "fail": "FAIL", "skip": "skip"}


def report_rows(report: ValidationReport) -> list[tuple[str, ...]]:
    """Return the table of a report: a header, then one row per check of every container."""
    rows: list[tuple[str, ...]] = [("CONTAINER", "AGENT", "CHECK", "SOURCE", "EXPECTED", "ACTUAL", "RESULT")]
    for container in report.containers:
        for check in container.checks:
            rows.append((container.container_id[:12], container.agent or "-", check.name, check.source,
                         check.expected, check.actual, MARKS[check.status]))
    return rows


def report_summary(report: ValidationReport) -> list[str]:
    """Return the lines after the table: what each container was compared with, and the totals."""
    lines = []
    for container in report.containers:
        against = f"plan {container.plan_path}" if container.plan_path else "the default hardening (no plan.json found)"
        lines.append(f"{container.container_id[:12]} ({container.name}, run {container.run_id}) "
                     f"compared with {against}")
    for container_id in report.exited:
        lines.append(f"{container_id} exited while it was being checked")
    if report.message:
        lines.append(report.message)
    counts = report.counts()
    if report.containers:
        failed = sorted({f"{item.agent or item.container_id[:12]}: {check.name} ({check.source})"
                         for item in report.containers for check in item.failed})
        verdict = "every check passed" if report.ok else "FAILED: " + "; ".join(failed)
        lines.append(f"{len(report.containers)} container(s), {counts['pass']} passed, {counts['fail']} failed, "
                     f"{counts['skip']} skipped: {verdict}")
    return lines
