"""Host-path checks of a plan: sensitive locations, overlapping writable paths, the source scan."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .agent_profile import MAX_PROMPT
from .claims import find_overlaps
from .errors import Problem
from .hostpaths import home_directories, is_within, scan_source, sensitive_reason, writable_reason
from .layout import STATE_FOLDER

if TYPE_CHECKING:
    from .agent_profile import ResolvedAgent
    from .manifest import LoadedManifest
    from .plan import HostFacts


@dataclass
class CheckedPaths:
    source: Path
    output: Path
    workspaces: dict[str, Path]
    # Writable run folders inside the source, hidden from agents by an empty mount.
    masks: tuple[Path, ...]
    problems: list[Problem] = field(default_factory=list)


def resolve(base: Path, text: str) -> Path:
    """Resolve a manifest path against the manifest's folder, following every symlink."""
    return Path(os.path.realpath(base / Path(text).expanduser()))


def check_paths(loaded: LoadedManifest, facts: HostFacts, *, runs_root: Path, run_dir: Path) -> CheckedPaths:
    manifest = loaded.manifest
    homes = list(facts.homes) or home_directories()
    problems: list[Problem] = []

    def reject(field_path: tuple[str | int, ...], message: str) -> None:
        problems.append(loaded.problem(field_path, message))

    source = resolve(loaded.base_dir, manifest.source.path)
    output = resolve(loaded.base_dir, manifest.output)
    runs = Path(os.path.realpath(runs_root))

    source_reason = sensitive_reason(source, homes)
    for field_path, written, path, reason in (
        (("source",), manifest.source.path, source, source_reason),
        (("output",), manifest.output, output, writable_reason(output, homes)),
    ):
        if reason:
            reject(field_path, f"{_shown(written, path)} {reason}; choose a project folder instead")

    if source_reason:
        pass
    elif not source.exists():
        reject(("source",), f"{_shown(manifest.source.path, source)} does not exist; create it or fix the path")
    elif not source.is_dir():
        reject(("source",), f"{_shown(manifest.source.path, source)} is not a folder; "
               "give the folder agents should read")

    reason = writable_reason(runs, homes)
    if reason:
        problems.append(Problem(str(loaded.path), None, "--runs-dir",
                                f"the runs folder {runs} {reason}; pass --runs-dir with a project folder"))

    workspaces: dict[str, Path] = {}
    for index, agent in enumerate(manifest.agents):
        if agent.workspace is None:
            workspaces[agent.name] = run_dir / "agents" / agent.name
            continue
        workspace = resolve(loaded.base_dir, agent.workspace)
        workspaces[agent.name] = workspace
        workspace_field: tuple[str | int, ...] = ("agents", index, "workspace")
        reason = writable_reason(workspace, homes)
        if reason:
            reject(workspace_field, f"{_shown(agent.workspace, workspace)} {reason}; choose a project folder instead")
        if is_within(runs, workspace) or is_within(workspace, runs):
            # The run folder contains logs and results that orchestrate writes as the invoking user.
            reject(workspace_field, f"{workspace} overlaps the runs folder {runs}; use a folder outside it")
        elif workspace.exists() or workspace.is_symlink():
            # A fresh folder is made, and owned, by this run alone: no two runs share it and no
            # folder that existed before (a system folder, another run's workspace) changes owner.
            reject(workspace_field, f"{workspace} already exists; remove it or name a new folder, "
                   "which the run creates")

    problems.extend(_overlap_problems(loaded, workspaces, source=source, output=output))

    masks = [runs] if is_within(runs, source) and runs != source else []
    state = output / STATE_FOLDER
    if is_within(state, source) and not any(is_within(state, mask) for mask in masks):
        masks.append(state)
    for agent in manifest.agents:
        workspace = workspaces[agent.name]
        if agent.workspace is not None and is_within(workspace, source) and workspace != source:
            if not any(is_within(workspace, mask) for mask in masks):
                masks.append(workspace)
    if is_within(source, runs):
        reject(("source",), f"{source} lies inside the runs folder {runs}; move one of them")

    if source.is_dir() and not any(problem.field == "source" for problem in problems):
        for finding in scan_source(source, skip=masks):
            if finding.mask:
                masks.append(finding.path)
                continue
            reject(("source",), f"{finding.path} {finding.reason}; move it out of the source "
                   "or point source at a folder without it")

    problems.extend(_claim_problems(loaded))
    return CheckedPaths(source=source, output=output, workspaces=workspaces, masks=tuple(masks), problems=problems)


def _claim_problems(loaded: LoadedManifest) -> list[Problem]:
    """Reject two agents whose `writes` claims overlap outside the manifest's shared paths."""
    agents = loaded.manifest.agents
    index_of = {agent.name: index for index, agent in enumerate(agents)}
    claims = {agent.name: agent.writes for agent in agents if agent.writes}
    shared = {item.path for item in loaded.manifest.shared}
    problems = []
    for overlap in find_overlaps(claims, shared):
        position = agents[index_of[overlap.second_agent]].writes.index(overlap.second_pattern)
        problems.append(loaded.problem(
            ("agents", index_of[overlap.second_agent], "writes", position),
            f"claim '{overlap.second_pattern}' overlaps claim '{overlap.first_pattern}' of agent "
            f"{overlap.first_agent}; make the claims disjoint, or list the common path under `shared`",
        ))
    return problems


def _shown(written: str, resolved: Path) -> str:
    """Show the path as the manifest wrote it, and where it leads when that differs."""
    if written == str(resolved):
        return written
    return f"{written} (resolves to {resolved})"


def _overlap_problems(
    loaded: LoadedManifest, workspaces: dict[str, Path], *, source: Path, output: Path
) -> list[Problem]:
    """Reject writable paths that are equal to or nested in another writable or shared path."""
    problems: list[Problem] = []
    index_of = {agent.name: index for index, agent in enumerate(loaded.manifest.agents)}
    names = list(workspaces)

    for position, name in enumerate(names):
        workspace = workspaces[name]
        field_path = ("agents", index_of[name], "workspace")

        def reject(message: str, field_path: tuple[str | int, ...] = field_path) -> None:
            problems.append(loaded.problem(field_path, message))

        for other in names[position + 1:]:
            other_path = workspaces[other]
            if workspace == other_path:
                reject(f"{workspace} is also the workspace of agent {other}; give each agent its own")
            elif is_within(workspace, other_path) or is_within(other_path, workspace):
                reject(f"{workspace} and the workspace of agent {other} ({other_path}) are nested; "
                       "use disjoint folders")
        if is_within(source, workspace):
            reject(f"{workspace} contains the source {source}, which would make the source writable; "
                   "use another folder")
        if is_within(workspace, output) or is_within(output, workspace):
            reject(f"{workspace} overlaps the output tree {output}, which only orchestrate writes; "
                   "use another folder")
    return problems


# Measured with runsc 0.0~20221219 (Debian 12) on its default ptrace platform: a gVisor sandbox has
# about 80 host threads while a lifeline-wrapped agent starts, and each agent process adds about 9. The host
# pids limit counts them all, and a sandbox that reaches it fails to start or exits with code 2.
GVISOR_MIN_PIDS = 128
GVISOR_SETUP = (
    "install gVisor with `sudo apt-get install runsc`, register it in /etc/docker/daemon.json as "
    '"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}, and reload the '
    "engine (`sudo systemctl reload docker`, or `sudo kill -HUP` with the PID in /var/run/docker.pid); "
    "`sudo bash scripts/quickstart.sh` does all three"
)


def isolation_problems(
    loaded: LoadedManifest, facts: HostFacts, *, index: int, isolation: str, pids: int
) -> list[Problem]:
    """Reject gVisor isolation on an engine without runsc, or with a pids limit too low for the sandbox."""
    if isolation != "gvisor":
        return []
    agent = loaded.manifest.agents[index]
    problems = []
    if "runsc" not in facts.runtimes:
        field_path: tuple[str | int, ...] = (
            ("agents", index, "isolation") if agent.isolation else ("defaults", "isolation")
        )
        registered = ", ".join(sorted(facts.runtimes)) or "none"
        problems.append(loaded.problem(
            field_path,
            f"isolation gvisor needs the engine runtime runsc, which is not registered (the engine has: "
            f"{registered}); {GVISOR_SETUP}",
            cause="runtime-missing",
        ))
    if pids < GVISOR_MIN_PIDS:
        field_path = (
            ("agents", index, "resources", "pids") if agent.resources.pids is not None
            else ("defaults", "resources", "pids")
        )
        problems.append(loaded.problem(
            field_path,
            f"pids {pids} is too low for isolation gvisor: the limit also counts gVisor's own threads, about 80 "
            f"before the agent runs; set pids to {GVISOR_MIN_PIDS} or more",
        ))
    return problems


def read_prompt(loaded: LoadedManifest, index: int, resolved: ResolvedAgent) -> tuple[str | None, list[Problem]]:
    """Return the agent's prompt text, read from its file when it names one, and the problems found."""
    from .agent_profile import prompt_text_problems
    from .manifest import PromptFile

    prompt = loaded.manifest.agents[index].prompt
    if not isinstance(prompt, PromptFile):
        return prompt, []

    field_path: tuple[str | int, ...] = ("agents", index, "prompt", "file")
    path = resolve(loaded.base_dir, prompt.file)
    try:
        with path.open("rb") as handle:
            # One byte past the limit is enough to tell that a file is too large.
            raw = handle.read(MAX_PROMPT + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        return None, [loaded.problem(field_path, f"prompt file {_shown(prompt.file, path)} does not exist; "
                                     "create it or fix the path")]
    except IsADirectoryError:
        return None, [loaded.problem(field_path, f"{_shown(prompt.file, path)} is a folder; name the prompt file")]
    except OSError as exc:
        return None, [loaded.problem(field_path, f"cannot read prompt file {_shown(prompt.file, path)}: "
                                     f"{exc.strerror}")]
    except UnicodeDecodeError as exc:
        return None, [loaded.problem(field_path, f"prompt file {_shown(prompt.file, path)} is not UTF-8 text "
                                     f"(byte {exc.start}); save it as UTF-8")]

    problems = [loaded.problem(field_path, message)
                for _, message in prompt_text_problems(text, resolved, field_path)]
    return (None if problems else text), problems
