"""Remove what runs left behind: containers found by the run label, and run folders on request."""

from __future__ import annotations

from pathlib import Path

from .control_protocol import socket_path
from .errors import InputError
from .plan import LABEL_AGENT, LABEL_RUN, RUN_ID_PATTERN, RunPlan
from .run_copies import remove_snapshot_refs
from .runtime.docker import DockerRuntime
from .source_copy import copies_root
from .status import is_active
from .workspace import remove_tree


def _workspaces_outside(run_folder: Path) -> list[Path]:
    """Return the fixed `workspace:` folders of a run, which live outside its run folder."""
    try:
        plan = RunPlan.model_validate_json((run_folder / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    resolved = run_folder.resolve()
    return [
        agent.workspace
        for agent in plan.agents
        if resolved not in agent.workspace.resolve().parents and agent.workspace.is_dir()
    ]


def _reason_to_keep(runs_root: Path, run_id: str) -> str | None:
    folder = runs_root / run_id
    if not RUN_ID_PATTERN.fullmatch(run_id) or not folder.is_dir():
        return f"its folder is not in {runs_root}; remove them with `orchestrate cleanup {run_id}`"
    if is_active(folder):
        return f"it is active; stop it with `orchestrate stop {run_id}`"
    return None


def _remove_networks(runtime: DockerRuntime, *, run_id: str | None, runs_root: Path,
                     skipped: dict[str, str]) -> list[str]:
    """Remove the egress networks of the run (or of every dead run), after their containers are gone."""
    lines = []
    for name, labels in runtime.list_labelled_networks({LABEL_RUN: run_id}).items():
        owner_run = str(labels.get(LABEL_RUN))
        if run_id is None:
            reason = _reason_to_keep(runs_root, owner_run)
            if reason is not None:
                skipped[owner_run] = reason
                continue
        runtime.remove_network(name)
        lines.append(f"removed network {name} (run {owner_run})")
    return lines


def _remove_stale_socket(run_folder: Path) -> list[str]:
    """Remove the control socket of a killed run, because its process never reached the code that removes it.

    Callers pass only a run that no live process holds. The unlink does not follow a link, and the folder is
    removed only when empty.
    """
    path = socket_path(run_folder)
    try:
        path.unlink()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"removing the stale control socket {path} failed ({exc.strerror or exc}); delete it by hand"]
    try:
        path.parent.rmdir()
    except OSError:
        pass
    return [f"removed the stale control socket {path}"]


def clean(runtime: DockerRuntime, *, run_id: str | None, runs_root: Path, remove_files: bool) -> str:
    """Force-remove the containers of one run, or of every dead run of `runs_root`; return a report."""
    if run_id is not None and not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from the run's summary or from {runs_root}/")
    if remove_files and run_id is None:
        raise InputError("--remove-files needs a RUN; name the run whose folder should be deleted")

    if run_id is not None and is_active(runs_root / run_id):
        raise InputError(
            f"run {run_id} is active: its orchestrate process holds {runs_root / run_id / 'run.lock'}; "
            f"stop it with `orchestrate stop {run_id}`, which keeps its evidence"
        )

    containers = runtime.list_labelled({LABEL_RUN: run_id})
    lines = []
    skipped: dict[str, str] = {}
    for container_id in containers:
        labels = runtime.inspect(container_id)["Config"].get("Labels") or {}
        owner_run = str(labels.get(LABEL_RUN))
        if run_id is None:
            # Without a RUN only this runs folder's dead runs are cleaned: another folder's run may be alive.
            reason = _reason_to_keep(runs_root, owner_run)
            if reason is not None:
                skipped[owner_run] = reason
                continue
        runtime.remove(container_id)
        # The broker container carries the run label but no agent label.
        role = f"agent {labels[LABEL_AGENT]}" if labels.get(LABEL_AGENT) else "the egress broker"
        owner = f"run {owner_run}, {role}"
        lines.append(f"removed container {container_id[:12]} ({owner})")
    lines.extend(_remove_networks(runtime, run_id=run_id, runs_root=runs_root, skipped=skipped))
    for skipped_run, reason in sorted(skipped.items()):
        lines.append(f"kept the containers of run {skipped_run}: {reason}")
    if not containers:
        lines.append("no container of " + (f"run {run_id}" if run_id else "any run") + " is left")
    if run_id is not None and not (runs_root / run_id).is_dir() and not containers:
        raise InputError(
            f"run {run_id} is unknown: no container has its label and {runs_root / run_id} does not exist; "
            "check the run id, or pass --runs-dir with the folder that holds the run"
        )

    if run_id is not None:
        lines.extend(_remove_stale_socket(runs_root / run_id))
    if run_id is not None and not remove_files and copies_root(runs_root / run_id).is_dir():
        lines.append(f"kept the agents' source copies in {copies_root(runs_root / run_id)}; delete them and "
                     "the run's snapshot refs with --remove-files")
    if remove_files and run_id is not None:
        folder = runs_root / run_id
        if folder.is_dir():
            for ref in remove_snapshot_refs(folder, run_id):
                lines.append(f"deleted the ref {ref}")
            for workspace in _workspaces_outside(folder):
                remove_tree(workspace)
                lines.append(f"deleted the agent workspace {workspace}")
            remove_tree(folder)
            lines.append(f"deleted {folder}")
    return "\n".join(lines)
