"""`orchestrate shell`: one interactive sandbox, run through the same path as `orchestrate run`.

The shell is a run with one interactive agent. Its manifest is written to the
run folder as `shell.yaml` and loaded like any other, so the plan checks, the
monitor, the audit log, publishing, the shutdown deadline and the cleanup all
apply. With no manifest the agent reads the current folder (or --source)
read-only, writes a fresh workspace under the runs folder, and runs the image's
shell. With --manifest and --agent it takes that agent's settings and replaces
only its command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import yamlsource
from .errors import InputError, ManifestError
from .interactive import SHELL_COMMAND
from .manifest import LoadedManifest, load_manifest
from .plan import new_run_id
from .profiles import PROFILE_NAMES

DEFAULT_PROFILE = "custom"
SHELL_AGENT = "shell"
SHELL_MANIFEST = "shell.yaml"
# An interactive session outlives a batch agent's default of 30 minutes; the manifest's own timeout wins.
DEFAULT_TIMEOUT = "8h"


@dataclass(frozen=True)
class ShellRequest:
    runs_dir: Path
    command: tuple[str, ...] = ()
    manifest: Path | None = None
    agent: str | None = None
    source: Path | None = None
    profile: str | None = None
    timeout: str | None = None


def prepare_shell_manifest(request: ShellRequest, *, cwd: Path) -> tuple[LoadedManifest, str]:
    """Write the shell's manifest into a new run folder, load it, and return it with the run id."""
    _check_options(request)
    document = _from_manifest(request) if request.manifest is not None else _default_document(request, cwd)
    run_id = new_run_id(str(document["name"]))
    run_dir = request.runs_dir / run_id
    path = run_dir / SHELL_MANIFEST
    try:
        run_dir.mkdir(parents=True, mode=0o700)
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--runs-dir {request.runs_dir}: cannot create the run folder {run_dir} "
                         f"({exc.strerror or exc}); pass --runs-dir with a folder you can write") from exc
    try:
        return load_manifest(path), run_id
    except ManifestError:
        discard_run_folder(run_dir)
        raise


def discard_run_folder(run_dir: Path) -> None:
    """Remove a shell's run folder that contains nothing but its manifest, after a problem stopped the shell."""
    (run_dir / SHELL_MANIFEST).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # Something else is in it, so it stays.


def _check_options(request: ShellRequest) -> None:
    if (request.manifest is None) != (request.agent is None):
        raise InputError("give --manifest and --agent together, such as `orchestrate shell --manifest agents.yaml "
                         "--agent reviewer`, or neither for a sandbox of the current folder")
    if request.manifest is not None and request.source is not None:
        raise InputError("--source applies only without --manifest; the manifest's `source` sets the folder")
    profile = request.profile or DEFAULT_PROFILE
    if profile not in PROFILE_NAMES:
        known = ", ".join(sorted(PROFILE_NAMES))
        raise InputError(f"unknown profile '{profile}' for --profile; use one of: {known} "
                         "(`orchestrate agents` lists them)")


def _agent_entry(request: ShellRequest, base: dict[str, Any]) -> dict[str, Any]:
    entry = dict(base)
    entry["command"] = list(request.command or SHELL_COMMAND)
    entry["interactive"] = True
    if request.profile is not None:
        entry["profile"] = request.profile
    if request.timeout is not None:
        entry["timeout"] = request.timeout
    else:
        entry.setdefault("timeout", DEFAULT_TIMEOUT)
    return entry


def _default_document(request: ShellRequest, cwd: Path) -> dict[str, Any]:
    source = (request.source or cwd).resolve()
    return {
        "version": 1,
        "name": SHELL_AGENT,
        "description": "written by `orchestrate shell`",
        "source": str(source),
        "output": str(cwd.resolve() / "generated"),
        "agents": [_agent_entry(request, {"name": SHELL_AGENT})],
    }


def _from_manifest(request: ShellRequest) -> dict[str, Any]:
    """Return the manifest with only the named agent, made interactive, and every path absolute."""
    assert request.manifest is not None and request.agent is not None
    loaded = load_manifest(request.manifest)  # Validated first, so its errors point into the user's file.
    data: Any = yamlsource.load(request.manifest.read_text(encoding="utf-8")).data
    agents = [entry for entry in data["agents"] if entry.get("name") == request.agent]
    if not agents:
        known = ", ".join(agent.name for agent in loaded.manifest.agents)
        raise InputError(f"{request.manifest} has no agent '{request.agent}'; its agents are: {known}")

    base = loaded.base_dir
    document = dict(data)
    source = document["source"]
    if isinstance(source, str):
        document["source"] = _absolute(base, source)
    else:
        # The other fields of the source (such as its mode) are kept as written.
        document["source"] = {**source, "path": _absolute(base, source["path"])}
    document["output"] = _absolute(base, document.get("output", "./generated"))
    entry = _agent_entry(request, agents[0])
    if entry.get("workspace"):
        entry["workspace"] = _absolute(base, entry["workspace"])
    document["agents"] = [entry]
    return document


def _absolute(base: Path, text: str) -> str:
    return os.path.normpath(base / Path(text).expanduser())


def shell_exit_code(run_exit: int, agent_exit: int | None, agent_state: str) -> int:
    """Return the shell's exit code: the command's own, unless the run failed around it."""
    if agent_state in ("succeeded", "failed") and agent_exit is not None and run_exit in (0, 1):
        return agent_exit
    return run_exit

