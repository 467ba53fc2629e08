"""Source copies without Docker: plan mounts, making copies, reading them safely, change tracking, diff and merge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from orchestrator import copy_watch
from orchestrator.copy_tree import MAX_DEPTH, Baseline, TreeItem, blob_id, item_blob_id, read_all, walk
from orchestrator.copy_watch import CopyState, CopyWatch
from orchestrator.diffing import diff_run, terminal_safe
from orchestrator.errors import InputError, ManifestError, PlanError
from orchestrator.git_merge import merge_run
from orchestrator.layout import SOURCE_TARGET
from orchestrator.plan import RunPlan
from orchestrator.plan_checks import shared_writable_mounts
from orchestrator.run_copies import prepare_run_copies, remove_snapshot_refs, snapshot_run
from orchestrator.snapshots import quote_path, tree_baseline
from orchestrator.source_copy import CopyRequest, copy_path, load_baseline, prepare_copies
from orchestrator.status import RunLock
from orchestrator.violations import Violation

from .conftest import agent, manifest_data

PlanFor = Callable[..., RunPlan]


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, f"git {' '.join(args)}: {completed.stderr}"
    return completed.stdout


@pytest.fixture
def repository(source_dir: Path) -> Path:
    git(source_dir, "init", "--quiet", "--initial-branch=main")
    git(source_dir, "config", "user.name", "Test User")
    git(source_dir, "config", "user.email", "test@example.invalid")
    (source_dir / "a.txt").write_text("a\n", encoding="utf-8")
    (source_dir / "b.txt").write_text("b\n", encoding="utf-8")
    git(source_dir, "add", "--all")
    git(source_dir, "commit", "--quiet", "-m", "start")
    return source_dir


def copy_data(source: Path, *names: str, mode: str = "copy") -> dict[str, object]:
    data = manifest_data(source, agents=[agent(name) for name in names])
    data["source"] = {"path": str(source), "mode": mode}
    return data


def inodes(folder: Path) -> set[tuple[int, int]]:
    found = set()
    for path in folder.rglob("*"):
        info = path.lstat()
        found.add((info.st_dev, info.st_ino))
    return found


def copy_plan(plan_for: PlanFor, source: Path, *names: str) -> RunPlan:
    plan = plan_for(copy_data(source, *names))
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "plan.json").write_text(plan.model_dump_json(), encoding="utf-8")
    return plan


# -- manifest and plan ---------------------------------------------------------------------------------------


def test_copy_mode_mounts_private_copy(plan_for: PlanFor, source_dir: Path) -> None:
    plan = copy_plan(plan_for, source_dir, "alpha", "beta")

    assert plan.source_mode == "copy"
    for item in plan.agents:
        mounts = {mount.target: mount for mount in item.container.mounts}
        assert item.source_copy == copy_path(plan.run_dir, item.name)
        assert mounts[SOURCE_TARGET].source == str(item.source_copy)
        assert mounts[SOURCE_TARGET].read_only is False
        assert all(mount.source != str(source_dir) for mount in item.container.mounts)


def test_read_only_mode_unchanged(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir))

    mounts = {mount.target: mount for mount in plan.agents[0].container.mounts}
    assert plan.source_mode == "read-only"
    assert plan.agents[0].source_copy is None
    assert mounts[SOURCE_TARGET].source == str(source_dir)
    assert mounts[SOURCE_TARGET].read_only is True


def test_copy_writable_mounts_disjoint(plan_for: PlanFor, source_dir: Path) -> None:
    plan = copy_plan(plan_for, source_dir, "alpha", "beta", "gamma")

    assert shared_writable_mounts(list(plan.agents)) == []


def test_shared_writable_mount_found(plan_for: PlanFor, source_dir: Path) -> None:
    plan = copy_plan(plan_for, source_dir, "alpha", "beta")
    alpha, beta = plan.agents
    nested = beta.model_copy(update={"container": beta.container.model_copy(update={"mounts": tuple(
        mount.model_copy(update={"source": str(alpha.workspace / "inner")}) if mount.target == SOURCE_TARGET
        else mount
        for mount in beta.container.mounts
    )})})

    found = shared_writable_mounts([alpha, nested])

    assert len(found) == 1
    assert "agent alpha" in found[0]
    assert "agent beta" in found[0]


def test_unknown_source_mode_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        plan_for(copy_data(source_dir, "alpha", mode="writable"))

    assert "source.mode" in str(caught.value)


# -- making copies -------------------------------------------------------------------------------------------


def test_git_copy_is_self_contained(plan_for: PlanFor, repository: Path) -> None:
    (repository / "a.txt").write_text("uncommitted\n", encoding="utf-8")
    plan = copy_plan(plan_for, repository, "alpha")

    record = prepare_run_copies(plan)

    copy = copy_path(plan.run_dir, "alpha")
    assert record is not None and record.kind == "git"
    assert (copy / "a.txt").read_text(encoding="utf-8") == "a\n"
    mine, theirs = os.stat(repository / "b.txt"), os.stat(copy / "b.txt")
    assert (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino)
    assert inodes(copy / ".git") & inodes(repository / ".git") == set()
    assert (copy / ".git").is_dir()
    assert git(copy, "-c", "safe.directory=*", "remote") == ""
    assert git(copy, "-c", "safe.directory=*", "branch", "--show-current").strip() == \
        f"orchestrate/{plan.run_id}/alpha"
    mentions = [path for path in (copy / ".git").rglob("*")
                if path.is_file() and str(repository).encode() in path.read_bytes()]
    assert mentions == []
    assert not (copy / ".git" / "hooks").exists()


def test_git_copy_needs_commit(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    git(source_dir, "init", "--quiet")
    (tmp_path / "run").mkdir()

    with pytest.raises(PlanError, match="no commit yet"):
        plan_for(copy_data(source_dir, "alpha"))
    with pytest.raises(InputError, match="no commit yet"):
        prepare_copies(CopyRequest(run_id="r", run_dir=tmp_path / "run", source=source_dir,
                                   agents=(("alpha", os.getuid(), os.getgid()),)))


def test_plain_copy_leaves_out_runs_folder(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(copy_data(source_dir, "alpha"), runs=source_dir / "runs")
    plan.run_dir.mkdir(parents=True)
    (source_dir / "tool.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    os.chmod(source_dir / "tool.sh", 0o755)
    os.symlink("app.py", source_dir / "link.py")

    record = prepare_run_copies(plan)

    copy = copy_path(plan.run_dir, "alpha")
    assert record is not None and record.kind == "plain"
    assert sorted(os.listdir(copy)) == ["app.py", "link.py", "tool.sh"]
    assert os.readlink(copy / "link.py") == "app.py"
    assert os.stat(copy / "tool.sh").st_mode & 0o100
    assert set(load_baseline(plan.run_dir).blobs) == {"app.py", "link.py", "tool.sh"}
    assert load_baseline(plan.run_dir).sizes["link.py"] == len("app.py")


# -- reading a copy ------------------------------------------------------------------------------------------


def test_walk_skips_git_and_follows_no_link(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    for name in (".git", ".GIT", "sub/.Git"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config").write_text("[core]\n", encoding="utf-8")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("secret", encoding="utf-8")
    os.symlink(outside, tmp_path / "escape")
    os.mkfifo(tmp_path / "pipe")

    items = {}
    contents = {}
    for item in walk(tmp_path):
        items[item.path] = item
        contents[item.path] = read_all(item) if item.fd is not None else item.target

    assert set(items) == {"file", "escape", "pipe"}
    assert items["escape"].kind == "link"
    assert contents["escape"] == os.fsencode(outside)
    assert items["pipe"].kind == "other"
    assert contents["file"] == b"x"


def test_walk_reports_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "locked").write_text("x", encoding="utf-8")
    os.chmod(tmp_path / "locked", 0)
    skipped: list[str] = []

    paths = [item.path for item in walk(tmp_path, skipped=skipped)]

    if os.getuid() == 0:
        assert paths == ["locked"]  # Root reads a mode-000 file.
    else:
        assert (paths, skipped) == ([], ["locked"])


def test_short_read_keeps_announced_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")

    for item in walk(tmp_path):
        os.truncate(tmp_path / "f", 4)
        data = read_all(item)

    assert data == b"0123" + bytes(6)


def test_blob_id_matches_git(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello\x00world\n")
    expected = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert blob_id(b"hello\x00world\n") == expected


def test_quote_path_escapes() -> None:
    assert quote_path('a"b\\c\nd') == b'"a\\"b\\\\c\\012d"'


# -- change tracking -----------------------------------------------------------------------------------------


def state_with(tmp_path: Path, name: str, files: dict[str, str]) -> CopyState:
    root = tmp_path / name
    root.mkdir()
    for path, text in files.items():
        (root / path).write_text(text, encoding="utf-8")
    return CopyState(name, root)


def baseline_of(files: dict[str, bytes]) -> Baseline:
    return Baseline(blobs={path: blob_id(data) for path, data in files.items()},
                    sizes={path: len(data) for path, data in files.items()})


def test_equal_rewrite_is_no_change(tmp_path: Path) -> None:
    state = state_with(tmp_path, "alpha", {"a.txt": "a\n", "b.txt": "b\n"})
    baseline = baseline_of({"a.txt": b"a\n", "b.txt": b"b\n"})
    assert state.rescan(baseline) == set()

    (state.root / "a.txt").write_text("a\n", encoding="utf-8")
    (state.root / "b.txt").write_text("changed\n", encoding="utf-8")
    assert state.rescan(baseline) == {"b.txt"}

    (state.root / "b.txt").write_text("b\n", encoding="utf-8")
    (state.root / "a.txt").unlink()
    (state.root / ".git").mkdir()
    (state.root / ".git" / "index").write_text("x", encoding="utf-8")
    assert state.rescan(baseline) == {"a.txt"}


def test_file_swapped_for_link_is_change(tmp_path: Path) -> None:
    # The link's target text equals the file's content, so both have the same blob id.
    state = state_with(tmp_path, "alpha", {"x": "b.txt", "y": "y\n"})
    os.symlink("x", state.root / "link")
    baseline = tree_baseline(state.root)
    assert state.rescan(baseline) == set()

    (state.root / "x").unlink()
    os.symlink("b.txt", state.root / "x")
    (state.root / "link").unlink()
    (state.root / "link").write_text("x", encoding="utf-8")

    assert state.rescan(baseline) == {"x", "link"}


def test_executable_bit_alone_is_change(tmp_path: Path) -> None:
    state = state_with(tmp_path, "alpha", {"run.sh": "echo\n"})
    baseline = tree_baseline(state.root)
    assert state.rescan(baseline) == set()

    os.chmod(state.root / "run.sh", 0o755)

    assert state.rescan(baseline) == {"run.sh"}


def test_rewrite_within_timestamp_tick_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels before 6.13 stamp a write at timer-tick granularity, so a same-size rewrite right after a walk
    # read the file can keep its ctime. Leaving ctime out of the key makes that happen on any kernel.
    monkeypatch.setattr(copy_watch, "stat_key",
                        lambda info: (info.st_ino, info.st_size, info.st_mtime_ns, 0, info.st_mode))
    state = state_with(tmp_path, "alpha", {"a.txt": "a\n"})
    baseline = baseline_of({"a.txt": b"a\n"})
    path = state.root / "a.txt"
    assert state.rescan(baseline) == set()

    before = path.stat()
    path.write_text("x\n", encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert state.rescan(baseline) == {"a.txt"}


def test_walk_reads_only_starting_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A sparse file of a terabyte costs no disk, but hashing it would hold the copy watch for an hour.
    read: list[str] = []

    def recording_blob_id(item: TreeItem) -> str:
        read.append(item.path)
        return item_blob_id(item)

    monkeypatch.setattr(copy_watch, "item_blob_id", recording_blob_id)
    state = state_with(tmp_path, "alpha", {"a.txt": "a\n", "b.txt": "b\n"})
    baseline = baseline_of({"a.txt": b"a\n", "b.txt": b"b\n"})
    os.truncate(state.root / "b.txt", 1 << 20)
    with open(state.root / "sparse", "wb") as handle:
        handle.truncate(1 << 20)

    assert state.rescan(baseline) == {"b.txt", "sparse"}
    assert read == ["a.txt"]


def test_second_change_reports_conflict(plan_for: PlanFor, repository: Path) -> None:
    plan = copy_plan(plan_for, repository, "alpha", "beta")
    prepare_run_copies(plan)
    reported: list[Violation] = []
    watch = CopyWatch(plan, report=reported.append)
    alpha, beta = (copy_path(plan.run_dir, name) for name in ("alpha", "beta"))

    async def main() -> None:
        await watch.load()
        (alpha / "a.txt").write_text("alpha\n", encoding="utf-8")
        (beta / "b.txt").write_text("beta\n", encoding="utf-8")
        await watch.scan_all()
        assert reported == []
        (beta / "a.txt").write_text("beta\n", encoding="utf-8")
        await watch.scan_all()
        await watch.scan_all()

    anyio.run(main)

    assert len(reported) == 1
    assert reported[0].kind == "write-conflict"
    assert reported[0].agent == "beta"
    assert reported[0].subject == f"{SOURCE_TARGET}/a.txt"
    assert reported[0].evidence["other_agent"] == "alpha"
    assert watch.changes() == {"alpha": {"a.txt"}, "beta": {"a.txt", "b.txt"}}


# -- diff and merge ------------------------------------------------------------------------------------------


def finished_run(plan_for: PlanFor, repository: Path, edits: dict[str, dict[str, str]]) -> RunPlan:
    """Make copies, apply each agent's edits as its container would, and record them as after a run."""
    plan = copy_plan(plan_for, repository, *edits)
    prepare_run_copies(plan)
    for name, files in edits.items():
        for path, text in files.items():
            (copy_path(plan.run_dir, name) / path).write_text(text, encoding="utf-8")
    snapshot_run(plan)
    return plan


def test_merge_applies_clean_and_skips_conflict(plan_for: PlanFor, repository: Path) -> None:
    (repository / "b.txt").write_text("user's uncommitted edit\n", encoding="utf-8")
    plan = finished_run(plan_for, repository, {
        "alpha": {"a.txt": "alpha\n"},
        "beta": {"a.txt": "beta\n", "b.txt": "beta\n"},
        "gamma": {"c.txt": "gamma\n"},
    })
    head = git(repository, "rev-parse", "HEAD")

    report = merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    outcomes = {item.agent: item.outcome for item in report.items}
    assert outcomes == {"alpha": "applied", "beta": "conflict", "gamma": "applied"}
    assert report.items[1].files == ["a.txt"]
    assert report.exit_code == 1
    assert git(repository, "show", "result:a.txt") == "alpha\n"
    assert git(repository, "show", "result:b.txt") == "b\n"
    assert git(repository, "show", "result:c.txt") == "gamma\n"
    assert git(repository, "log", "--format=%an", "result").split("\n")[:2] == [
        "orchestrate agent gamma", "orchestrate agent alpha"]
    assert git(repository, "rev-parse", "HEAD") == head
    assert (repository / "b.txt").read_text(encoding="utf-8") == "user's uncommitted edit\n"


def test_merge_twice_applies_nothing_new(plan_for: PlanFor, repository: Path) -> None:
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})
    merge_run(plan.run_dir.parent, plan.run_id)

    again = merge_run(plan.run_dir.parent, plan.run_id)

    assert [item.outcome for item in again.items] == ["unchanged"]
    assert again.exit_code == 0


def test_merge_leaves_attribute_conversions_out(plan_for: PlanFor, repository: Path) -> None:
    # Checkout conversions that .gitattributes asks for would otherwise come back as changes of every such file.
    (repository / ".gitattributes").write_text("*.bat text eol=crlf\n*.c ident\n", encoding="utf-8")
    (repository / "run.bat").write_text("echo 1\necho 2\n", encoding="utf-8")
    (repository / "x.c").write_text("/* $Id$ */\n", encoding="utf-8")
    git(repository, "add", "--all")
    git(repository, "commit", "--quiet", "-m", "attributes")
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})
    copy = copy_path(plan.run_dir, "alpha")

    merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    assert (copy / "run.bat").read_bytes() == b"echo 1\necho 2\n"
    assert (copy / "x.c").read_bytes() == b"/* $Id$ */\n"
    assert git(copy, "-c", "safe.directory=*", "status", "--porcelain").split() == ["M", "a.txt"]
    assert git(repository, "diff", "--name-only", "main", "result").split() == ["a.txt"]
    assert [diff.text.count(b"diff --git") for diff in diff_run(plan.run_dir.parent, plan.run_id)] == [1]


def test_merge_rejects_checked_out_branch(plan_for: PlanFor, repository: Path) -> None:
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    with pytest.raises(InputError, match="checked out"):
        merge_run(plan.run_dir.parent, plan.run_id, branch="main")


@pytest.mark.parametrize("name", ["@{-1}", "refs/heads/main", "HEAD", "-x", "a..b"])
def test_merge_rejects_invalid_branch_name(plan_for: PlanFor, repository: Path, name: str) -> None:
    git(repository, "checkout", "--quiet", "-b", "other")
    git(repository, "checkout", "--quiet", "main")
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    with pytest.raises(InputError, match="not a valid branch name"):
        merge_run(plan.run_dir.parent, plan.run_id, branch=name)

    assert git(repository, "for-each-ref", "--format=%(refname)", "refs/heads").split() == [
        "refs/heads/main", "refs/heads/other"]


def test_merge_rejects_symbolic_branch(plan_for: PlanFor, repository: Path) -> None:
    # An alias such as master -> main: update-ref would follow it and move the checked-out main.
    git(repository, "symbolic-ref", "refs/heads/master", "refs/heads/main")
    head = git(repository, "rev-parse", "HEAD")
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    with pytest.raises(InputError, match="symbolic ref to refs/heads/main"):
        merge_run(plan.run_dir.parent, plan.run_id, branch="master")

    assert git(repository, "rev-parse", "HEAD") == head
    assert git(repository, "status", "--porcelain") == ""


def start_rebase(repository: Path) -> str:
    """Stop an interactive rebase of a new branch `feature` before its first step; return the branch's tip."""
    git(repository, "checkout", "--quiet", "-b", "feature")
    (repository / "b.txt").write_text("feature\n", encoding="utf-8")
    git(repository, "commit", "--quiet", "--all", "-m", "feature")
    git(repository, "checkout", "--quiet", "main")
    (repository / "m.txt").write_text("main\n", encoding="utf-8")
    git(repository, "add", "m.txt")
    git(repository, "commit", "--quiet", "-m", "main")
    git(repository, "checkout", "--quiet", "feature")
    completed = subprocess.run(["git", "-C", str(repository), "rebase", "--interactive", "main"],
                               capture_output=True, text=True, check=False,
                               env={**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i 1ibreak"})
    assert completed.returncode == 0, completed.stderr
    return git(repository, "rev-parse", "feature").strip()


def test_merge_rejects_branch_being_rebased(plan_for: PlanFor, repository: Path) -> None:
    tip = start_rebase(repository)
    plan = finished_run(plan_for, repository, {"alpha": {"c.txt": "alpha\n"}})

    with pytest.raises(InputError, match="feature is being rebased in"):
        merge_run(plan.run_dir.parent, plan.run_id, branch="feature")

    assert git(repository, "rev-parse", "feature").strip() == tip
    git(repository, "-c", "core.editor=true", "rebase", "--continue")
    assert git(repository, "show", "feature:m.txt") == "main\n"


def test_merge_rejects_branch_being_bisected(plan_for: PlanFor, repository: Path) -> None:
    git(repository, "checkout", "--quiet", "-b", "feature")
    git(repository, "bisect", "start")
    git(repository, "checkout", "--quiet", "--detach", "HEAD")
    plan = finished_run(plan_for, repository, {"alpha": {"c.txt": "alpha\n"}})

    with pytest.raises(InputError, match="feature is being bisected in"):
        merge_run(plan.run_dir.parent, plan.run_id, branch="feature")


def test_merge_branches_leaves_one_per_agent(plan_for: PlanFor, repository: Path) -> None:
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}, "beta": {"a.txt": "beta\n"}})

    report = merge_run(plan.run_dir.parent, plan.run_id, branches=True)

    assert report.exit_code == 0
    for name, text in (("alpha", "alpha\n"), ("beta", "beta\n")):
        assert git(repository, "show", f"orchestrate/{plan.run_id}/{name}:a.txt") == text


def test_plain_source_merge_rejected_diff_works(plan_for: PlanFor, source_dir: Path) -> None:
    plan = finished_run(plan_for, source_dir, {"alpha": {"app.py": "print('changed')\n"}})

    diffs = diff_run(plan.run_dir.parent, plan.run_id)

    assert b"+print('changed')" in diffs[0].text
    with pytest.raises(InputError, match="not a git repository"):
        merge_run(plan.run_dir.parent, plan.run_id)


def test_diff_of_unknown_agent_rejected(plan_for: PlanFor, repository: Path) -> None:
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    with pytest.raises(InputError, match="no agent 'omega'"):
        diff_run(plan.run_dir.parent, plan.run_id, "omega")


def test_merge_of_active_run_rejected(plan_for: PlanFor, repository: Path) -> None:
    plan = copy_plan(plan_for, repository, "alpha")
    prepare_run_copies(plan)
    (copy_path(plan.run_dir, "alpha") / "a.txt").write_text("alpha\n", encoding="utf-8")
    run_lock = RunLock(plan.run_dir)
    try:
        with pytest.raises(InputError, match="still running"):
            merge_run(plan.run_dir.parent, plan.run_id, branch="result")
    finally:
        run_lock.release()

    assert git(repository, "for-each-ref", "refs/heads/result") == ""


def test_merge_after_crash_ignores_live_diff(plan_for: PlanFor, repository: Path) -> None:
    # A diff while the run is active records the copy as it is then. If the run then dies before its final
    # snapshot, merge must take the copy, not that earlier state.
    plan = copy_plan(plan_for, repository, "alpha")
    prepare_run_copies(plan)
    copy = copy_path(plan.run_dir, "alpha")
    run_lock = RunLock(plan.run_dir)
    (copy / "a.txt").write_text("early\n", encoding="utf-8")
    early = diff_run(plan.run_dir.parent, plan.run_id)
    (copy / "a.txt").write_text("late\n", encoding="utf-8")
    run_lock.release()

    merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    assert b"+early" in early[0].text
    assert git(repository, "show", "result:a.txt") == "late\n"
    assert len(remove_snapshot_refs(plan.run_dir, plan.run_id)) == 2
    assert git(repository, "for-each-ref", "refs/orchestrate") == ""


def test_cleanup_refs_keeps_merged_branch(plan_for: PlanFor, repository: Path) -> None:
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})
    merge_run(plan.run_dir.parent, plan.run_id, branch="kept")

    removed = remove_snapshot_refs(plan.run_dir, plan.run_id)

    assert removed == [f"refs/orchestrate/runs/{plan.run_id}/alpha"]
    assert git(repository, "for-each-ref", "refs/orchestrate") == ""
    assert git(repository, "show", "kept:a.txt") == "alpha\n"
    fsck = subprocess.run(["git", "-C", str(repository), "fsck"], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_source_record_names_base(plan_for: PlanFor, repository: Path) -> None:
    plan = copy_plan(plan_for, repository, "alpha")
    prepare_run_copies(plan)

    record = json.loads((plan.run_dir / "copies" / "source.json").read_text(encoding="utf-8"))

    assert record["kind"] == "git"
    assert record["base_commit"] == git(repository, "rev-parse", "HEAD").strip()


def test_conflict_found_by_inotify_between_walks(plan_for: PlanFor, repository: Path) -> None:
    plan = copy_plan(plan_for, repository, "alpha", "beta")
    prepare_run_copies(plan)
    reported: list[Violation] = []
    arrived = anyio.Event()

    def report(violation: Violation) -> None:
        reported.append(violation)
        arrived.set()

    # The periodic walk is an hour away, so only an inotify event can lead to the report.
    watch = CopyWatch(plan, report=report, interval=3600)

    async def main() -> float:
        async with anyio.create_task_group() as group:
            await group.start(watch.run)
            (copy_path(plan.run_dir, "alpha") / "a.txt").write_text("alpha\n", encoding="utf-8")
            await anyio.sleep(0.2)
            written = time.monotonic()
            (copy_path(plan.run_dir, "beta") / "a.txt").write_text("beta\n", encoding="utf-8")
            with anyio.fail_after(5):
                await arrived.wait()
            group.cancel_scope.cancel()
        return time.monotonic() - written

    seconds = anyio.run(main)

    assert [item.subject for item in reported] == [f"{SOURCE_TARGET}/a.txt"]
    assert seconds < 1.0


def test_snapshot_leaves_out_git_lookalikes(plan_for: PlanFor, repository: Path) -> None:
    plan = copy_plan(plan_for, repository, "alpha")
    prepare_run_copies(plan)
    copy = copy_path(plan.run_dir, "alpha")
    # Each name is .git to HFS+ or NTFS, whose checkout would then plant hooks and configuration.
    for name in (".git\u200c", ".GIT.", ".git ", "GIT~1", ".git::$INDEX_ALLOCATION"):
        (copy / name).mkdir()
        (copy / name / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n", encoding="utf-8")
    os.symlink("/etc/passwd", copy / ".gitmodules")
    os.symlink("a.txt", copy / "link.txt")

    snapshot_run(plan)

    tree = git(repository, "ls-tree", "-r", "--name-only", f"refs/orchestrate/runs/{plan.run_id}/alpha").split()
    assert sorted(tree) == ["a.txt", "app.py", "b.txt", "link.txt"]
    fsck = subprocess.run(["git", "-C", str(repository), "fsck", "--strict"], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_snapshot_leaves_out_files_fsck_rejects(plan_for: PlanFor, repository: Path) -> None:
    # A submodule name with `..` or a URL that reads as an option once let a clone run code; git fsck of
    # the user's whole repository fails while any tree names such a blob.
    bad = '[submodule "../../x"]\n\tpath = lib\n\turl = -u./payload\n'
    plan = copy_plan(plan_for, repository, "alpha")
    prepare_run_copies(plan)
    copy = copy_path(plan.run_dir, "alpha")
    (copy / ".gitmodules").write_text(bad, encoding="utf-8")
    (copy / ".gitattributes").write_text("*.bin binary\n", encoding="utf-8")
    (copy / "sub").mkdir()
    (copy / "sub" / ".GITMODULES").write_text(bad, encoding="utf-8")
    snapshot_run(plan)

    report = merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    assert [item.outcome for item in report.items] == ["applied"]
    tree = git(repository, "ls-tree", "-r", "--name-only", "result").split()
    assert ".gitmodules" not in tree
    assert "sub/.GITMODULES" not in tree
    assert ".gitattributes" in tree
    fsck = subprocess.run(["git", "-C", str(repository), "fsck", "--strict"], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_submodule_kept_through_merge(plan_for: PlanFor, repository: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    git(library, "init", "--quiet")
    (library / "lib.txt").write_text("lib\n", encoding="utf-8")
    git(library, "add", "--all")
    git(library, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "lib")
    git(repository, "-c", "protocol.file.allow=always", "submodule", "--quiet", "add", str(library), "lib")
    git(repository, "commit", "--quiet", "-m", "add lib")
    pinned = git(repository, "rev-parse", "HEAD:lib").strip()
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    report = merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    assert [item.outcome for item in report.items] == ["applied"]
    assert git(repository, "rev-parse", "result:lib").strip() == pinned
    assert git(repository, "diff", "--name-only", "main", "result").split() == ["a.txt"]


def test_merge_keeps_files_nested_too_deep(plan_for: PlanFor, repository: Path) -> None:
    # The walk stops at MAX_DEPTH, so what lies deeper would otherwise count as deleted by every agent.
    deep = repository.joinpath(*["d"] * (MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep\n", encoding="utf-8")
    git(repository, "add", "--all")
    git(repository, "commit", "--quiet", "-m", "deep")
    plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

    report = merge_run(plan.run_dir.parent, plan.run_id, branch="result")

    assert [item.outcome for item in report.items] == ["applied"]
    assert git(repository, "diff", "--name-only", "main", "result").split() == ["a.txt"]


def test_terminal_diff_escapes_controls() -> None:
    shown = terminal_safe(b"+a\x1b[31mred\tx\r\n-\xc2\x9bq \xe2\x80\xaeevil\n")

    assert b"\x1b" not in shown
    assert b"\r" not in shown
    assert b"\xc2\x9b" not in shown
    assert b"\xe2\x80\xae" not in shown
    assert shown.count(b"\n") == 2
    assert b"red\tx" in shown


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can write a repository that another user owns")
def test_root_writes_as_repository_owner(plan_for: PlanFor) -> None:
    owner = (4321, 4321)
    # The owner must reach the repository, which pytest's own folders (mode 700, owned by root) do not allow.
    repository = Path(tempfile.mkdtemp(prefix="orchestrate-owner-"))
    try:
        git(repository, "init", "--quiet", "--initial-branch=main")
        (repository / "a.txt").write_text("a\n", encoding="utf-8")
        git(repository, "add", "--all")
        git(repository, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "a")
        for folder, folders, files in os.walk(repository):
            for name in [folder, *(os.path.join(folder, entry) for entry in folders + files)]:
                os.lchown(name, *owner)
        plan = finished_run(plan_for, repository, {"alpha": {"a.txt": "alpha\n"}})

        merge_run(plan.run_dir.parent, plan.run_id, branch="result")
        remove_snapshot_refs(plan.run_dir, plan.run_id)

        not_owned = [path for path in (repository / ".git").rglob("*") if path.lstat().st_uid != owner[0]]
        assert not_owned == []
        assert git(repository, "-c", "safe.directory=*", "show", "result:a.txt") == "alpha\n"
    finally:
        shutil.rmtree(repository)
