"""`orchestrate merge`: bring agents' work back into the user's repository as commits, without a checkout.

Every step is plumbing on the user's git folder: `merge-tree --write-tree` merges in memory, `commit-tree`
writes a commit, and `update-ref` moves the branch only if it still points where the merge started. So the
user's checkout, index and working tree are never touched, and a branch that a worktree has checked out is
rejected, since moving it would leave that checkout out of step with its branch. So are a branch that a
worktree is rebasing or bisecting, and a symbolic ref, which update-ref would follow to the branch it names.
A merge with conflicts is never committed: its agent is skipped and its conflicted files reported, so no
conflict marker lands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .branch_use import branch_in_use, symbolic_target
from .errors import InputError
from .host_git import GitFailed, git, git_text, repository_lock
from .plan import RunPlan
from .run_copies import agent_author, agent_commit, load_run
from .source_copy import CopySource, branch_name
from .status import is_active

log = logging.getLogger(__name__)

Outcome = Literal["applied", "conflict", "unchanged", "branch", "exists"]
ZERO_OID = "0" * 40


@dataclass
class AgentMerge:
    agent: str
    outcome: Outcome
    # The commit made on the target branch, or the agent's own snapshot for --branches.
    commit: str | None = None
    files: list[str] = field(default_factory=list)
    branch: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"agent": self.agent, "outcome": self.outcome, "commit": self.commit, "files": self.files,
                "branch": self.branch}


@dataclass
class MergeReport:
    run_id: str
    target: str | None
    base: str
    items: list[AgentMerge] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every agent was applied or had nothing to apply, 1 when one was skipped."""
        return 1 if any(item.outcome in ("conflict", "exists") for item in self.items) else 0

    def to_json(self) -> dict[str, object]:
        return {"run": self.run_id, "target": self.target, "base": self.base, "exit_code": self.exit_code,
                "agents": [item.to_json() for item in self.items]}


def default_target(run_id: str) -> str:
    return f"orchestrate/{run_id}-merged"


def merge_run(runs_root: Path, run_id: str, *, branch: str | None = None, branches: bool = False) -> MergeReport:
    """Merge every agent's changes of a finished run, in manifest order, onto one branch or onto one each."""
    plan, record = load_run(runs_root, run_id)
    if is_active(plan.run_dir):
        raise InputError(f"run {run_id} is still running; wait for it to end, or stop it with "
                         f"`orchestrate stop {run_id}`, then merge")
    if record.kind != "git":
        raise InputError(f"run {run_id} copied a folder that is not a git repository ({plan.source}), so there is "
                         f"no branch to merge into; see the changes with `orchestrate diff {run_id}` and apply "
                         "them yourself, for example with `git apply` or `patch`")
    if branches and branch is not None:
        raise InputError("give either --branch or --branches, not both")

    commits = {agent.name: agent_commit(plan, record, agent.name) for agent in plan.agents}
    if branches:
        return _leave_branches(plan, record, commits)
    return _merge_onto(plan, record, commits, branch or default_target(run_id))


def _leave_branches(plan: RunPlan, record: CopySource, commits: dict[str, str]) -> MergeReport:
    report = MergeReport(run_id=plan.run_id, target=None, base=record.base_commit)
    with repository_lock(record.git_dir):
        for agent, commit in commits.items():
            name = branch_name(plan.run_id, agent)
            existing = _branch_tip(record.git_dir, name)
            if existing == commit:
                report.items.append(AgentMerge(agent, "branch", commit, branch=name))
            elif existing is not None:
                report.items.append(AgentMerge(agent, "exists", existing, branch=name))
            else:
                git(record.git_dir, "update-ref", "-m", f"orchestrate merge --branches {plan.run_id}",
                    f"refs/heads/{name}", commit, ZERO_OID)
                report.items.append(AgentMerge(agent, "branch", commit, branch=name))
    return report


def _merge_onto(plan: RunPlan, record: CopySource, commits: dict[str, str], target: str) -> MergeReport:
    git_dir = record.git_dir
    checked = git(git_dir, "check-ref-format", "--branch", target, check=False)
    # check-ref-format expands shorthands such as @{-1} (the branch checked out before) and prints the result;
    # a name that starts with refs/ would make a branch refs/heads/refs/..., which `git branch -D` cannot name.
    if checked.returncode != 0 or checked.stdout.decode(errors="replace").strip() != target \
            or target.startswith("refs/"):
        raise InputError(f"--branch '{target}' is not a valid branch name; use a name such as agents-result")
    alias_of = symbolic_target(git_dir, target)
    if alias_of is not None:
        # update-ref would follow the link and move the branch it names, which may be checked out.
        raise InputError(
            f"invalid --branch {target}: it is a symbolic ref to {alias_of}. Pass a plain branch, such as a new "
            "name, which is created from the run's starting commit"
        )
    use = branch_in_use(git_dir, target)
    if use is not None:
        raise InputError(
            f"branch {target} is {use}; merging into it would leave that worktree out of step with its "
            f"branch. Pass --branch with a branch no worktree uses (a new name is created from the run's "
            f"starting commit), or finish the work in that worktree and switch it to another branch first"
        )

    report = MergeReport(run_id=plan.run_id, target=target, base=record.base_commit)
    with repository_lock(git_dir):
        start = _branch_tip(git_dir, target)
        tip = start or record.base_commit
        base_tree = _tree(git_dir, record.base_commit)
        for agent, commit in commits.items():
            item, tip = _merge_agent(git_dir, plan.run_id, agent, commit, tip=tip, base_tree=base_tree)
            report.items.append(item)
        if tip != (start or record.base_commit):
            git(git_dir, "update-ref", "-m", f"orchestrate merge {plan.run_id}", f"refs/heads/{target}", tip,
                start or ZERO_OID)
            log.info("branch %s now points at %s", target, tip[:12])
    return report


def _merge_agent(
    git_dir: Path, run_id: str, agent: str, commit: str, *, tip: str, base_tree: str
) -> tuple[AgentMerge, str]:
    if _tree(git_dir, commit) == base_tree:
        return AgentMerge(agent, "unchanged"), tip
    completed = git(git_dir, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", tip, commit,
                    check=False)
    if completed.returncode not in (0, 1):
        error = completed.stderr.decode(errors="replace").strip()
        raise GitFailed(f"`git merge-tree` failed for agent {agent} in {git_dir}: {error}")
    fields = [part.decode("utf-8", "surrogateescape") for part in completed.stdout.split(b"\x00") if part]
    tree = fields[0].strip()
    if completed.returncode == 1:
        return AgentMerge(agent, "conflict", files=sorted(set(fields[1:]))), tip
    if tree == _tree(git_dir, tip):
        return AgentMerge(agent, "unchanged"), tip
    name, email = agent_author(agent)
    new = git(git_dir, "commit-tree", tree, "-p", tip, "-m", f"orchestrate run {run_id}: changes of agent {agent}",
              extra_env={"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}).stdout.decode().strip()
    return AgentMerge(agent, "applied", new), new


def _tree(git_dir: Path, commit: str) -> str:
    return git_text(git_dir, "rev-parse", "--verify", f"{commit}^{{tree}}")


def _branch_tip(git_dir: Path, name: str) -> str | None:
    completed = git(git_dir, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}^{{commit}}", check=False)
    return completed.stdout.decode().strip() if completed.returncode == 0 else None
