"""Private writable source copies: one per agent, made before any container starts.

A git source (a folder whose top level contains `.git`) is cloned per agent with `--no-hardlinks`, so the
copy is a self-contained repository that shares no inode with the user's files, checked out from the
committed HEAD on the branch `orchestrate/<run>/<agent>`, with no remote. Uncommitted changes in the user's
checkout are not copied. The clone's checkout is the only time host git uses a copy's `.git`, and it happens
before the agent's container exists; after that the copy belongs to the agent and only Python reads it.

Any other source is copied file by file. Its starting point is recorded as a commit in a private bare
repository in the run folder, so `orchestrate diff` works the same for both kinds.

`copies/source.json` records where the starting commit lives; `copies/baseline.json` records the blob id and
size of every file at the start, which the monitor compares against.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .copy_tree import Baseline, read_chunks, walk
from .errors import EnvironmentProblem, InputError
from .host_git import common_dir, find_git_dir, git, head_commit, repository_lock
from .snapshots import snapshot_ref, take_snapshot, tree_baseline

log = logging.getLogger(__name__)

COPIES_FOLDER = "copies"
SOURCE_RECORD = "source.json"
BASELINE_RECORD = "baseline.json"
PLAIN_STORE = "base.git"

CopyKind = Literal["git", "plain"]
# Switches off every conversion between a blob and its checked-out file: end of line, $Id$ expansion, filters
# and encodings. It stays in the copy, so the agent's git agrees with what the copy's files hold.
RAW_CHECKOUT_ATTRIBUTES = "* -text -ident -filter -working-tree-encoding\n"


@dataclass(frozen=True)
class CopySource:
    """The starting point of a run's copies: the repository that contains the starting commit, and that commit."""

    kind: CopyKind
    # The user's git folder for a git source; the run's private bare repository otherwise.
    git_dir: Path
    base_commit: str
    # The user's checkout (its top level) for a git source.
    repository: Path | None

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "git_dir": str(self.git_dir), "base_commit": self.base_commit,
                "repository": None if self.repository is None else str(self.repository)}


def copies_root(run_dir: Path) -> Path:
    return run_dir / COPIES_FOLDER


def copy_path(run_dir: Path, agent: str) -> Path:
    return copies_root(run_dir) / agent


def branch_name(run_id: str, agent: str) -> str:
    return f"orchestrate/{run_id}/{agent}"


def load_copy_source(run_dir: Path) -> CopySource | None:
    """Return the record of a run's copies, or None for a run without copies."""
    try:
        data = json.loads((copies_root(run_dir) / SOURCE_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {copies_root(run_dir) / SOURCE_RECORD}: {exc}; the run's copies "
                         "record is damaged") from exc
    repository = data.get("repository")
    return CopySource(kind=data["kind"], git_dir=Path(data["git_dir"]), base_commit=data["base_commit"],
                      repository=None if repository is None else Path(repository))


def load_baseline(run_dir: Path) -> Baseline:
    data = json.loads((copies_root(run_dir) / BASELINE_RECORD).read_text(encoding="utf-8"))
    return Baseline(blobs=data["blobs"], sizes=data["sizes"])


@dataclass(frozen=True)
class CopyRequest:
    """The inputs for making the copies of one run, taken from its plan."""

    run_id: str
    run_dir: Path
    source: Path
    # Agent name, host UID and GID that own the copy.
    agents: tuple[tuple[str, int, int], ...]
    # Absolute folders inside the source that are not copied: the run folder and orchestrate's state.
    excluded: tuple[Path, ...] = ()


def prepare_copies(request: CopyRequest) -> CopySource:
    """Make every agent's copy and record the starting point; raise EnvironmentProblem when that fails."""
    root = copies_root(request.run_dir)
    try:
        root.mkdir(mode=0o700)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create {root}: {exc.strerror}; check that the runs folder is writable") \
            from exc

    git_dir = find_git_dir(request.source)
    if git_dir is None:
        record = _plain_copies(request, root)
    else:
        record = _git_copies(request, git_dir)

    for name, uid, gid in request.agents:
        _hand_over(copy_path(request.run_dir, name), uid, gid)
    (root / SOURCE_RECORD).write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")
    log.info("made %d private %s cop%s of %s from %s", len(request.agents), record.kind,
             "y" if len(request.agents) == 1 else "ies", request.source, record.base_commit[:12])
    return record


def _git_copies(request: CopyRequest, git_dir: Path) -> CopySource:
    with repository_lock(git_dir):
        base = head_commit(git_dir)
        if base is None:
            raise InputError(f"the source repository {request.source} has no commit yet; commit the files the "
                             "agents should start from, or use a folder without .git")
        for name, _uid, _gid in request.agents:
            _clone(request, git_dir, base, copy_path(request.run_dir, name), branch_name(request.run_id, name))

    first = copy_path(request.run_dir, request.agents[0][0])
    _write_baseline(request.run_dir, tree_baseline(first))
    return CopySource(kind="git", git_dir=git_dir, base_commit=base, repository=request.source)


def _clone(request: CopyRequest, git_dir: Path, base: str, destination: Path, branch: str) -> None:
    # A local clone with --no-hardlinks copies the object files, about ten times faster than packing them
    # (--no-local). A repository that borrows objects from another (alternates) is packed instead, so the
    # copy contains every object itself rather than a path to a store the container cannot see.
    transport = "--no-local" if (common_dir(git_dir) / "objects" / "info" / "alternates").exists() else "--local"
    # --template= leaves out the sample hooks.
    git(None, "clone", "--quiet", transport, "--no-hardlinks", "--no-checkout", "--template=",
        os.path.abspath(request.source), os.path.abspath(destination))
    copy_git = Path(os.path.abspath(destination)) / ".git"
    # Snapshots record the copy's bytes as they are, so the checkout must write each blob unchanged: an
    # `eol=crlf`, `ident` or `working-tree-encoding` attribute in the user's .gitattributes would otherwise
    # show as a change to every such file in `diff` and `merge`. info/attributes overrides .gitattributes.
    (copy_git / "info").mkdir(exist_ok=True)
    (copy_git / "info" / "attributes").write_text(RAW_CHECKOUT_ATTRIBUTES, encoding="utf-8")
    # The copy is still the orchestrator's own here: no container has seen it yet.
    git(copy_git, f"--work-tree={os.path.abspath(destination)}", "checkout", "--quiet", "-b", branch, base)
    git(copy_git, "remote", "remove", "origin")
    # The reflog names the user's path ("clone: from ..."); the copy has no use for it.
    shutil.rmtree(copy_git / "logs", ignore_errors=True)


def _plain_copies(request: CopyRequest, root: Path) -> CopySource:
    exclude = [str(path.relative_to(request.source)) for path in request.excluded
               if path != request.source and path.is_relative_to(request.source)]
    for name, _uid, _gid in request.agents:
        _copy_files(request.source, copy_path(request.run_dir, name), exclude)

    store = root / PLAIN_STORE
    git(None, "init", "--quiet", "--bare", "--template=", str(store))
    first_agent = request.agents[0][0]
    snapshot = take_snapshot(
        copy_path(request.run_dir, first_agent), git_dir=store, parent=None,
        ref=snapshot_ref(request.run_id, "base"), author=("orchestrate", "orchestrate@localhost"),
        message=f"orchestrate run {request.run_id}: the source {request.source} at the start",
    )
    _write_baseline(request.run_dir, snapshot.recorded)
    return CopySource(kind="plain", git_dir=store, base_commit=snapshot.commit, repository=None)


def _copy_files(source: Path, destination: Path, exclude: list[str]) -> None:
    """Copy regular files and symlinks (as links); other entries and `.git` folders are left out."""
    destination.mkdir(mode=0o700)
    skipped: list[str] = []
    for item in walk(source, exclude=exclude, skipped=skipped):
        if item.kind == "other":
            log.warning("not copied: %s in %s is neither a file nor a symlink", item.path, source)
            continue
        target = destination / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.target is not None:
            os.symlink(os.fsdecode(item.target), target)
            continue
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if item.executable else 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            for chunk in read_chunks(item):
                handle.write(chunk)
    for path in skipped:
        log.warning("not copied: %s in %s could not be read or is nested too deep", path, source)


def _write_baseline(run_dir: Path, baseline: Baseline) -> None:
    path = copies_root(run_dir) / BASELINE_RECORD
    path.write_text(json.dumps(baseline.to_json(), sort_keys=True) + "\n", encoding="utf-8")


def _hand_over(copy: Path, uid: int, gid: int) -> None:
    """Give the copy to the agent's UID, as workspaces are, when orchestrate runs as root."""
    os.chmod(copy, 0o700)
    if os.getuid() != 0:
        return
    for folder, folders, files in os.walk(copy):
        os.lchown(folder, uid, gid)
        for name in folders + files:
            path = os.path.join(folder, name)
            os.lchown(path, uid, gid)
