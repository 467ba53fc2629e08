"""Agent workspaces on the host: create them owned by the agent, scan them, remove them.

A workspace is created before its container starts, owned by the UID the agent
runs as on the host. Otherwise Docker creates the folder as root and the agent
cannot write it, or the agent's files end up unreadable for the orchestrator.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EnvironmentProblem
from .layout import STATE_FOLDER
from .plan import AgentPlan, RunPlan
from .publish.locks import make_shared_folder
from .results import printable

log = logging.getLogger(__name__)

# Bounds the findings kept per agent, so a workspace of 200,000 hidden files cannot bloat result.json.
MAX_FINDINGS = 1000


@dataclass
class WorkspaceScan:
    files: int = 0
    bytes: int = 0
    # Entries an agent made unreadable or that could not be read: each is a finding.
    findings: list[str] = field(default_factory=list)


def prepare(plan: RunPlan) -> None:
    """Create the run folder, every agent's empty workspace with the right owner, and the output tree.

    The output tree and its state folder must exist before any container starts,
    because they are mount points: the tree itself, and the mask over its state folder.
    """
    try:
        (plan.run_dir / "agents").mkdir(parents=True, exist_ok=False, mode=0o700)
        for agent in plan.agents:
            _prepare_workspace(agent)
            _write_prompt(agent)
        plan.output.mkdir(parents=True, exist_ok=True)
        make_shared_folder(plan.output / STATE_FOLDER)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot prepare the run folder {plan.run_dir} or the output tree {plan.output}: {exc.strerror}; "
            "check that both paths are writable folders"
        ) from exc


def _prepare_workspace(agent: AgentPlan) -> None:
    agent.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.getuid() == 0:
        os.chown(agent.workspace, agent.host_uid, agent.host_gid)
    os.chmod(agent.workspace, 0o700)


def _write_prompt(agent: AgentPlan) -> None:
    """Write the prompt file that the agent's container mounts read-only; others of the run do not see it."""
    if agent.prompt_file is None or agent.prompt is None:
        return
    agent.prompt_file.parent.mkdir(mode=0o755, exist_ok=True)
    agent.prompt_file.write_text(agent.prompt, encoding="utf-8")
    # Readable by the agent's UID, which may differ from orchestrate's; the prompt is no secret.
    os.chmod(agent.prompt_file, 0o444)


def scan(root: Path) -> WorkspaceScan:
    """Count regular files and bytes under `root` without following links; record what hides."""
    result = WorkspaceScan()
    try:
        _account(str(root), root.lstat(), root, result, [])
    except OSError as exc:
        result.findings.append(f".: cannot be inspected ({exc.strerror})")
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            # A path past the system's length limit is not hidden; the publisher reaches it by descriptors.
            if exc.errno != errno.ENAMETOOLONG:
                result.findings.append(f"{_relative(folder, root)}: cannot be read ({exc.strerror})")
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                result.findings.append(f"{_relative(entry.path, root)}: cannot be read ({exc.strerror})")
                continue
            _account(entry.path, info, root, result, pending)
    result.findings.sort()
    if len(result.findings) > MAX_FINDINGS:
        dropped = len(result.findings) - MAX_FINDINGS
        result.findings = result.findings[:MAX_FINDINGS] + [f"... and {dropped} more entries like these"]
    return result


def _account(path: str, info: os.stat_result, root: Path, result: WorkspaceScan, pending: list[Path]) -> None:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        # Root reads through a mode-000 folder, so check the bits, not only whether reading works.
        if mode & stat.S_IRUSR == 0 or mode & stat.S_IXUSR == 0:
            result.findings.append(f"{_relative(path, root)}: folder made unreadable (mode {stat.filemode(mode)})")
        pending.append(Path(path))
    elif stat.S_ISREG(mode):
        result.files += 1
        result.bytes += info.st_size
        if mode & stat.S_IRUSR == 0:
            result.findings.append(f"{_relative(path, root)}: file made unreadable (mode {stat.filemode(mode)})")


def _relative(path: str | Path, root: Path) -> str:
    relative = os.path.relpath(path, root)
    return printable("." if relative == "." else relative)


def remove_tree(root: Path) -> None:
    """Delete `root`, first restoring owner permissions that an agent removed."""

    def restore_and_retry(_function: object, path: str, _error: object) -> None:
        if not os.path.lexists(path):
            return
        parent = os.path.dirname(path)
        for candidate in (parent, path):
            try:
                if not os.path.islink(candidate):
                    os.chmod(candidate, stat.S_IRWXU)
            except OSError:
                pass
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=restore_and_retry)
        else:
            os.unlink(path)

    if not (root.exists() or root.is_symlink()):
        return
    try:
        # onerror, not onexc: onexc needs Python 3.12.
        shutil.rmtree(root, onerror=restore_and_retry)
    except (RecursionError, OSError) as exc:
        # A tree thousands of folders deep overflows Python's recursion and PATH_MAX;
        # GNU chmod and rm walk it with directory descriptors instead.
        log.info("removing %s with rm, after %s", root, exc)
        subprocess.run(["chmod", "-R", "u+rwx", "--", str(root)], check=False, capture_output=True)
        completed = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(root)], check=False, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise EnvironmentProblem(f"cannot remove {root}: {completed.stderr.strip()}") from exc
