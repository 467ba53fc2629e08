"""The steps behind `orchestrate plan` and `orchestrate run`: load, plan, execute."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio

from .activity import Listener, ignore
from .agent_profile import agent_image
from .errors import InputError
from .liveview import LiveTable
from .manifest import DEFAULT_IMAGE, LoadedManifest
from .plan import RunPlan, build_plan, new_run_id
from .results import RunResult
from .runtime import Runtime
from .shutdown import DEFAULT_GRACE
from .supervisor import Supervisor


def plan_manifest(
    loaded: LoadedManifest, runtime: Runtime, *, runs_root: Path, run_id: str | None = None
) -> RunPlan:
    """Resolve a loaded manifest against this machine; raise on any problem."""
    if runs_root.exists() and not runs_root.is_dir():
        raise InputError(f"--runs-dir {runs_root} is a file, not a folder; give a folder for the run folders")
    manifest = loaded.manifest
    # The base image is looked up too, because the egress broker runs from it.
    images = sorted({DEFAULT_IMAGE, *(agent_image(agent, manifest.defaults.image) for agent in manifest.agents)})
    facts = runtime.host_facts(images, dict(os.environ))
    plan = build_plan(
        loaded,
        facts,
        # Resolved, so a runs folder named through a symlink or '..' is checked where it really is.
        runs_root=Path(os.path.realpath(runs_root)),
        run_id=run_id or new_run_id(manifest.name),
    )
    return plan


def execute(
    plan: RunPlan,
    runtime: Runtime,
    *,
    grace: float = DEFAULT_GRACE,
    handle_signals: bool = True,
    listener: Listener | None = None,
    table: LiveTable | None = None,
    terminal_size: tuple[int, int] | None = None,
    control_ready: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run every agent of `plan` to completion, timeout, violation or interruption.

    `control_ready` is called on the run's event loop with the control socket's path once it accepts
    connections. `terminal_size` (rows, columns) is the first size of interactive agents' terminals.
    """
    supervisor = Supervisor(plan, runtime, dict(os.environ), grace=grace, handle_signals=handle_signals,
                            listener=listener or ignore, table=table, terminal_size=terminal_size,
                            control_ready=control_ready)
    return anyio.run(supervisor.run)
