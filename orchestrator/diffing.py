"""`orchestrate diff`: each agent's changes to its source copy, against the commit the copies started from.

The diff compares two commits in the repository that contains them (the user's, or the run's private one for a
plain folder), so no working tree and no agent-written configuration takes part. External diff drivers and
text conversion are switched off, since both would run commands named in configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .host_git import git
from .results import printable
from .run_copies import agent_commit, load_run, pick_agents


@dataclass(frozen=True)
class AgentDiff:
    agent: str
    base: str
    commit: str
    # git's output as bytes: file names and contents need not be UTF-8.
    text: bytes


def terminal_safe(text: bytes) -> bytes:
    """Escape control characters and bidi overrides in a diff, keeping tabs and line ends.

    The diff shows bytes an agent wrote, and escape sequences in them would otherwise drive the terminal.
    """
    lines = text.decode("utf-8", "surrogateescape").split("\n")
    escaped = ["\t".join(printable(part) for part in line.split("\t")) for line in lines]
    return "\n".join(escaped).encode("utf-8", "surrogateescape")


def diff_run(runs_root: Path, run_id: str, agent: str | None = None, *, stat: bool = False) -> list[AgentDiff]:
    """Return the diff of every agent of a run (or of one), in manifest order."""
    plan, record = load_run(runs_root, run_id)
    diffs = []
    for name in pick_agents(plan, agent):
        commit = agent_commit(plan, record, name)
        options = ["--stat"] if stat else ["--patch", "--binary"]
        completed = git(record.git_dir, "diff", "--no-ext-diff", "--no-textconv", "--no-color", "--find-renames",
                        *options, record.base_commit, commit, "--")
        diffs.append(AgentDiff(agent=name, base=record.base_commit, commit=commit, text=completed.stdout))
    return diffs
