"""Helpers for the publisher tests: requests, workspaces, tree snapshots and workers for other processes.

This module contains no tests. It imports neither pytest nor hypothesis, so the
processes that multiprocessing spawns for the concurrency tests start fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import filelock

import orchestrator
from orchestrator.provenance import history
from orchestrator.publish import PublishLimits, PublishReport, PublishRequest, publish_agent, state_folder
from orchestrator.publish.fsops import TEMPORARY_PREFIX
from orchestrator.publish.ledger import read_records
from orchestrator.publish.model import SharedMode

SUMMARY = "SUMMARY.md"
LIMITS = PublishLimits(max_file_size=1 << 20, max_total_bytes=1 << 24, max_files=10_000)
UNPRIVILEGED_UID = 1000
UNPRIVILEGED_GID = 1000


def make_request(
    base: Path,
    agent: str,
    *,
    manifest: str = "demo",
    run_id: str = "run-1",
    output: Path | None = None,
    claims: Sequence[str] = (),
    shared: Sequence[tuple[str, SharedMode]] = ((SUMMARY, "append"),),
    limits: PublishLimits = LIMITS,
    lock_timeout: float = 10.0,
) -> PublishRequest:
    """Build a request whose workspace and run folder sit under `base` and exist."""
    workspace = base / "workspaces" / f"{manifest}-{agent}"
    run_dir = base / "runs" / run_id
    workspace.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return PublishRequest(
        output=output if output is not None else base / "output",
        run_id=run_id,
        run_dir=run_dir,
        manifest_name=manifest,
        agent=agent,
        workspace=workspace,
        claims=list(claims),
        shared=list(shared),
        limits=limits,
        lock_timeout=lock_timeout,
    )


def write_files(folder: Path, files: Mapping[str, bytes | str]) -> None:
    """Write each relative path of `files` below `folder`, creating parent folders."""
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_paths(report: PublishReport) -> list[str]:
    return sorted(item.path for item in report.published)


def actions(report: PublishReport) -> dict[str, str]:
    return {item.path: item.action for item in report.published}


def finding_kinds(report: PublishReport) -> dict[str, str]:
    return {finding.path: finding.kind for finding in report.findings}


def tree_files(output: Path) -> dict[str, bytes]:
    """Read every regular file of the output tree outside the state folder, keyed by relative path."""
    files: dict[str, bytes] = {}
    for folder, folders, names in os.walk(output):
        if Path(folder) == output and state_folder(output).name in folders:
            folders.remove(state_folder(output).name)
        for name in names:
            path = Path(folder) / name
            if stat.S_ISREG(path.lstat().st_mode):
                files[path.relative_to(output).as_posix()] = path.read_bytes()
    return files


def files_containing(folder: Path, marker: bytes) -> list[Path]:
    """List every regular file below `folder`, the state folder included, whose content contains `marker`."""
    found: list[Path] = []
    for parent, _folders, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if stat.S_ISREG(path.lstat().st_mode) and marker in path.read_bytes():
                found.append(path)
    return found


def leftover_temporaries(folder: Path) -> list[Path]:
    """List every file or folder below `folder` whose name marks it as a publisher's temporary file."""
    found: list[Path] = []
    for parent, folders, names in os.walk(folder):
        found.extend(Path(parent) / name for name in [*folders, *names] if name.startswith(TEMPORARY_PREFIX))
    return found


def special_mode_files(folder: Path) -> list[Path]:
    """List every file below `folder` with the setuid or setgid bit."""
    found: list[Path] = []
    for parent, _folders, names in os.walk(folder):
        for name in names:
            mode = (Path(parent) / name).lstat().st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(Path(parent) / name)
    return found


def ledger_records(output: Path) -> list[dict[str, Any]]:
    return list(read_records(state_folder(output)))


def check_ledger_matches_tree(output: Path, *, append_paths: Iterable[str] = (SUMMARY,)) -> None:
    """Assert that the ledger describes every published file of the output tree, and nothing else.

    An exclusive path must match the sha256 and size of its last record. An append
    path must equal its appended contributions joined in ledger order. Each
    contribution is checked by its sha256, since the ledger stores no content.
    """
    appended = set(append_paths)
    files = tree_files(output)
    records = ledger_records(output)
    recorded_paths = {record["path"] for record in records}

    for path in recorded_paths:
        assert path in files, f"{path} has ledger records but is missing from the output tree"
    for path, content in files.items():
        assert path in recorded_paths, f"{path} is in the output tree but not in the ledger"

        path_records = [record for record in records if record["path"] == path]
        assert history(output, path) == path_records, f"provenance history of {path} differs from the ledger"
        if path in appended:
            _check_append_records(path, content, path_records)
            continue
        last = [record for record in path_records if record["action"] != "appended"][-1]
        assert last["sha256"] == sha256(content), f"{path}: content differs from its last ledger record"
        assert last["size"] == len(content), f"{path}: size differs from its last ledger record"


def _check_append_records(path: str, content: bytes, records: list[dict[str, Any]]) -> None:
    assert all(record["action"] == "appended" for record in records), f"{path}: an append path has other records"
    pieces = _split_contributions(content, [(record["sha256"], record["size"]) for record in records])
    assert pieces is not None, f"{path}: content is not its ledger contributions joined in order"


def _split_contributions(content: bytes, expected: list[tuple[str, int]]) -> list[bytes] | None:
    """Cut `content` into contributions with the given sha256 and size, or return None when it does not fit.

    The publisher starts each contribution on a new line, so a newline follows
    every contribution that does not end with one.
    """
    pieces: list[bytes] = []
    position = 0
    for digest, size in expected:
        if pieces and not pieces[-1].endswith(b"\n"):
            if content[position : position + 1] != b"\n":
                return None
            position += 1
        piece = content[position : position + size]
        if len(piece) != size or sha256(piece) != digest:
            return None
        pieces.append(piece)
        position += size
    return pieces if position == len(content) else None


def summarize(report: PublishReport) -> dict[str, Any]:
    """Convert a report into plain data that can cross a process boundary."""
    return {
        "agent": report.agent,
        "published": [[item.path, item.action, item.sha256] for item in report.published],
        "findings": [[finding.kind, finding.path, finding.detail] for finding in report.findings],
        "error": None,
    }


def publish_worker(request: PublishRequest, barrier: Any) -> dict[str, Any]:
    """Wait until every worker is ready, publish one agent and return its report as plain data."""
    barrier.wait(timeout=60)
    try:
        return summarize(publish_agent(request))
    except Exception:
        return {"agent": request.agent, "published": [], "findings": [], "error": traceback.format_exc()}


def publish_worker_to_queue(request: PublishRequest, barrier: Any, results: Any) -> None:
    results.put(publish_worker(request, barrier))


# Run as another user: publish one request given as JSON and print the outcome as JSON.
UNPRIVILEGED_PUBLISH = """
import json, os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from orchestrator.publish import PublishError, PublishLimits, PublishRequest, publish_agent
fields = json.loads(sys.argv[1])
request = PublishRequest(
    output=Path(fields["output"]), run_id=fields["run_id"], run_dir=Path(fields["run_dir"]),
    manifest_name=fields["manifest_name"], agent=fields["agent"], workspace=Path(fields["workspace"]),
    claims=fields["claims"], shared=[tuple(item) for item in fields["shared"]],
    limits=PublishLimits(**fields["limits"]), lock_timeout=fields["lock_timeout"],
)
try:
    report = publish_agent(request)
except PublishError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({
        "error": None,
        "published": [[item.path, item.action] for item in report.published],
        "findings": [[finding.kind, finding.path, finding.detail] for finding in report.findings],
    }))
"""


def request_fields(request: PublishRequest) -> dict[str, Any]:
    return {
        "output": str(request.output),
        "run_id": request.run_id,
        "run_dir": str(request.run_dir),
        "manifest_name": request.manifest_name,
        "agent": request.agent,
        "workspace": str(request.workspace),
        "claims": list(request.claims),
        "shared": [list(item) for item in request.shared],
        "limits": {
            "max_file_size": request.limits.max_file_size,
            "max_total_bytes": request.limits.max_total_bytes,
            "max_files": request.limits.max_files,
        },
        "lock_timeout": request.lock_timeout,
    }


def _run_as(command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        user=UNPRIVILEGED_UID,
        group=UNPRIVILEGED_GID,
        extra_groups=[UNPRIVILEGED_GID],
        env=environment,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@functools.cache
def unprivileged_python() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """Find an interpreter that the unprivileged user can run and that imports this package.

    The virtualenv's interpreter comes first. When it sits in a folder that user
    cannot enter (a pyenv build under /root, for example), a system interpreter
    of the same minor version gets this checkout and the virtualenv's
    site-packages on PYTHONPATH. Return None when no candidate works.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    project = str(Path(orchestrator.__file__).resolve().parent.parent)
    site_packages = str(Path(filelock.__file__).resolve().parent.parent)
    candidates: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
    for name in (version, "python3"):
        system = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if system:
            candidates.append((system, {"PYTHONPATH": f"{project}:{site_packages}"}))

    for executable, extra in candidates:
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **extra}
        probe = f"import sys, orchestrator.publish; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
        try:
            result = _run_as([executable, "-s", "-c", probe], environment)
        except OSError:
            continue
        if result.returncode == 0:
            return (executable, "-s"), tuple(environment.items())
    return None


def publish_as_unprivileged_user(request: PublishRequest, *, umask: int = 0o077) -> dict[str, Any]:
    """Publish `request` as uid and gid 1000 in a subprocess and return its JSON outcome.

    Raise AssertionError when the subprocess crashes, with its stderr in the message.
    """
    interpreter = unprivileged_python()
    assert interpreter is not None, "no Python interpreter runs as the unprivileged user"
    command, environment = interpreter
    result = _run_as(
        [*command, "-c", UNPRIVILEGED_PUBLISH, json.dumps(request_fields(request)), f"{umask:o}"],
        dict(environment),
    )
    assert result.returncode == 0, f"the unprivileged publisher crashed:\n{result.stderr}"
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome
