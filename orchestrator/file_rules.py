"""Judge one workspace entry while agents run: conflicts, claims, escapes.

These are the publisher's rules applied early. The publisher still checks every
file again when it publishes. The monitor's job is to see a violation while the
agents run, within a fraction of a second of the write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .claims import Claim
from .layout import STATE_FOLDER
from .plan import RunPlan
from .symlinks import ReadLink, link_escapes
from .violations import CLAIM_VIOLATION, WRITE_CONFLICT


@dataclass(frozen=True)
class Entry:
    """The lstat fields of one workspace entry that the rules need."""

    path: str
    mode: int
    size: int
    nlink: int
    # The link's target, for symlinks only.
    target: str | None = None
    mtime: float = field(default=0.0, compare=False)

    @classmethod
    def from_stat(cls, path: str, info: os.stat_result, target: str | None = None) -> Entry:
        return cls(path, info.st_mode, info.st_size, info.st_nlink, target, info.st_mtime)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str


def escape_problem(entry: Entry, readlink: ReadLink | None = None) -> str | None:
    """Return why an entry is an escape attempt, or None; `readlink` resolves links on a symlink's way."""
    mode = entry.mode
    if stat.S_ISLNK(mode):
        parts = tuple(entry.path.split("/")[:-1])
        if link_escapes(parts, entry.target or "", readlink):
            return f"is a symlink to {entry.target!r}, outside the workspace"
        return None
    if stat.S_ISFIFO(mode):
        return "is a FIFO"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    if entry.is_dir:
        return None
    if mode & (stat.S_ISUID | stat.S_ISGID):
        return f"has the setuid or setgid bit (mode {stat.S_IMODE(mode):04o})"
    if entry.nlink > 1:
        return f"is a hard link ({entry.nlink} names for one file)"
    return None


class ClaimMap:
    """Every agent's claims and the run's shared paths, compiled once."""

    def __init__(self, claims: Mapping[str, Sequence[str]], shared: Sequence[tuple[str, str]]) -> None:
        self._claims = {agent: [Claim.parse(pattern) for pattern in patterns] for agent, patterns in claims.items()}
        self._shared = [(Claim.parse(pattern), mode) for pattern, mode in shared]

    @classmethod
    def of(cls, plan: RunPlan) -> ClaimMap:
        return cls(
            {agent.name: agent.writes for agent in plan.agents},
            [(item.path, item.mode) for item in plan.shared],
        )

    def shared_mode(self, path: str) -> str | None:
        for claim, mode in self._shared:
            if claim.matches(path):
                return mode
        return None

    def claimants(self, path: str) -> list[str]:
        return [agent for agent, claims in self._claims.items() if any(claim.matches(path) for claim in claims)]

    def judge_write(self, agent: str, path: str, first_writer: str | None) -> Finding | None:
        """Judge `agent` writing `path`, given the agent that wrote it first in this run (if another one did)."""
        if path.split("/", 1)[0] == STATE_FOLDER:
            return Finding(CLAIM_VIOLATION, f"{STATE_FOLDER} is reserved for orchestrate's own records")
        shared = self.shared_mode(path)
        if shared == "append":
            return None
        if first_writer is not None and first_writer != agent:
            return Finding(WRITE_CONFLICT, f"agent {first_writer} already wrote this path")
        others = [name for name in self.claimants(path) if name != agent]
        if others and shared is None:
            return Finding(WRITE_CONFLICT, f"the path is claimed by agent {', '.join(others)}")
        # An agent without `writes` may write any path that no other agent claims, as the publisher allows.
        if shared is None and self._claims.get(agent) and agent not in self.claimants(path):
            return Finding(CLAIM_VIOLATION, "no claim of this agent (writes) or shared path covers it")
        return None
