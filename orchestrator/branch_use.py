"""Find whether a worktree of the user's repository uses a branch, so `merge` never moves one under it.

A branch is in use, as git's own `git branch -f` judges it, when a worktree has it checked out, rebases it
or bisects it. During a rebase HEAD is detached, and git moves the branch to the result only at the end,
expecting the tip it had at the start. So a branch moved meanwhile makes `git rebase --continue` fail.
"""

from __future__ import annotations

from pathlib import Path

from .host_git import common_dir, git, git_text

HEADS = "refs/heads/"
# Files in a worktree's git folder that name the branch a rebase will update when it ends.
REBASE_HEAD_NAMES = ("rebase-merge/head-name", "rebase-apply/head-name")
# Names the branch (without refs/heads/) or the commit a bisect started from.
BISECT_START = "BISECT_START"


def branch_in_use(git_dir: Path, branch: str) -> str | None:
    """Return how a worktree uses `branch` ("checked out in PATH", "being rebased in PATH", ...), or None."""
    listing = git_text(git_dir, "worktree", "list", "--porcelain")
    worktree = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            worktree = line.removeprefix("worktree ")
        elif line == f"branch {HEADS}{branch}":
            return f"checked out in {worktree}"
    return _rebased_or_bisected(git_dir, branch)


def symbolic_target(git_dir: Path, branch: str) -> str | None:
    """Return the ref that branch `branch` points to when it is a symbolic ref, such as master -> main."""
    completed = git(git_dir, "symbolic-ref", "--quiet", f"{HEADS}{branch}", check=False)
    return completed.stdout.decode(errors="replace").strip() if completed.returncode == 0 else None


def _rebased_or_bisected(git_dir: Path, branch: str) -> str | None:
    common = common_dir(git_dir)
    linked = sorted((common / "worktrees").iterdir()) if (common / "worktrees").is_dir() else []
    for folder in [common, *linked]:
        for name in REBASE_HEAD_NAMES:
            if _read(folder / name) == f"{HEADS}{branch}":
                return f"being rebased in {_worktree_of(folder, common)}"
        if _read(folder / BISECT_START) in (branch, f"{HEADS}{branch}"):
            return f"being bisected in {_worktree_of(folder, common)}"
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _worktree_of(folder: Path, common: Path) -> str:
    """Return the checkout of a worktree's git folder: the `gitdir` file of a linked one names its `.git` file."""
    if folder == common:
        return str(common.parent) if common.name == ".git" else str(common)
    dot_git = _read(folder / "gitdir")
    return str(Path(dot_git).parent) if dot_git else str(folder)
