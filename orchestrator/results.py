"""The outcome of a run and of each agent in it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EXIT_AGENT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_VIOLATION
from .units import format_size

if TYPE_CHECKING:
    from .plan import AgentPlan
    from .publish import PublishReport
    from .workspace import WorkspaceScan

# Final states of an agent. Only "succeeded" counts as success.
STATES = ("succeeded", "failed", "timed-out", "interrupted", "error", "evidence-missing", "violation")


@dataclass
class AgentResult:
    name: str
    workspace: Path
    log_path: Path
    memory_limit: int
    state: str = "pending"
    exit_code: int | None = None
    oom_killed: bool = False
    seconds: float | None = None
    files: int = 0
    bytes: int = 0
    findings: list[str] = field(default_factory=list)
    message: str | None = None
    timed_out: bool = False
    interrupted: bool = False
    effective_pids: int | None = None
    effective_memory: int | None = None
    effective_cpus: float | None = None
    stop_seconds: float | None = None
    published: int = 0
    publish_findings: list[dict[str, str]] = field(default_factory=list)
    # Paths published for this agent during the run, while it ran and after it exited.
    published_paths: set[str] = field(default_factory=set)
    _failure: tuple[str, str] | None = None
    _started: float | None = None
    _ended: float | None = None

    @classmethod
    def pending(cls, agent: AgentPlan) -> AgentResult:
        return cls(
            name=agent.name,
            workspace=agent.workspace,
            log_path=agent.log_path,
            memory_limit=agent.container.limits.memory,
        )

    def fail(self, state: str, message: str) -> None:
        """Record the first failure; later ones are consequences of it."""
        if self._failure is None:
            self._failure = (state, printable(message))

    @property
    def started_at(self) -> float | None:
        return self._started

    @property
    def ended_at(self) -> float | None:
        return self._ended

    def mark_started(self) -> None:
        self._started = time.monotonic()

    def mark_ended(self) -> None:
        if self._started is not None and self._ended is None:
            self._ended = time.monotonic()

    def record_exit(self, exit_code: int, oom_killed: bool) -> None:
        if self._started is None:
            return
        self.mark_ended()
        self.exit_code = exit_code
        self.oom_killed = oom_killed

    def record_workspace(self, scan: WorkspaceScan) -> None:
        self.files = scan.files
        self.bytes = scan.bytes
        self.findings = scan.findings
        if scan.findings:
            count = len(scan.findings)
            noun = "entry" if count == 1 else "entries"
            self.fail("violation", f"the workspace hides {count} {noun}, first {scan.findings[0]}")

    def may_publish(self) -> bool:
        """Return whether the workspace should be published: only after a clean, successful exit."""
        clean = self._failure is None and not self.interrupted and not self.timed_out and not self.oom_killed
        return clean and self.exit_code == 0

    def record_publish(self, report: PublishReport) -> None:
        self.note_published(report)
        self.published = len(self.published_paths)
        self.publish_findings = [finding.to_json() for finding in report.findings[:1000]]
        if report.findings:
            first = report.findings[0]
            count = len(report.findings)
            self.fail("violation", f"{count} publishing finding(s), first {first.kind}: {first.path}: {first.detail}")

    def note_published(self, report: PublishReport) -> None:
        """Count the files of a publish, so a file published while running is not "unchanged" at the end."""
        self.published_paths.update(item.path for item in report.published if item.action != "unchanged")
        self.published = len(self.published_paths)

    def audit_fields(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "files": self.files,
            "published": self.published,
            "message": self.message,
        }

    def settle(self) -> None:
        """Decide the final state from everything recorded."""
        if self._started is not None and self._ended is not None:
            self.seconds = self._ended - self._started
        if self._failure is not None:
            self.state, self.message = self._failure
        elif self.interrupted:
            self.state, self.message = "interrupted", "stopped because the run was interrupted"
        elif self.timed_out:
            self.state, self.message = "timed-out", "killed after its time limit"
        elif self.exit_code == 0 and self.oom_killed:
            # A process of the agent was killed for memory even though the main one exited 0.
            self.state = "failed"
            limit = format_size(self.memory_limit)
            self.message = f"a process was killed for using more than the memory limit of {limit}"
        elif self.exit_code == 0:
            self.state = "succeeded"
        elif self.exit_code is None:
            self.state, self.message = "error", "no exit status was recorded"
        else:
            self.state = "failed"
            if self.oom_killed:
                self.message = f"killed for using more than its memory limit of {format_size(self.memory_limit)}"
            else:
                self.message = _last_output_line(self.log_path)

    def describe(self) -> str:
        parts = [f"exit {self.exit_code}" if self.exit_code is not None else "no exit code"]
        if self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        parts.append(f"{self.files} file{'s' if self.files != 1 else ''}")
        text = f"{self.state} ({', '.join(parts)})"
        return f"{text}: {self.message}" if self.message else text

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "files": self.files,
            "bytes": self.bytes,
            "findings": self.findings,
            "published": self.published,
            "publish_findings": self.publish_findings,
            "message": self.message,
            "workspace": str(self.workspace),
            "log": str(self.log_path),
            "effective_limits": {
                "pids": self.effective_pids,
                "memory": self.effective_memory,
                "cpus": self.effective_cpus,
            },
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 3),
        }


def _last_output_line(log_path: Path) -> str | None:
    """Return the agent's last line of output, shortened, to explain a failure in the summary."""
    try:
        with log_path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - 4096))
            tail = log.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    last = printable(lines[-1])
    return "last output: " + (last if len(last) <= 160 else last[:157] + "...")


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Escape control characters and bidi overrides, so names an agent chose cannot rewrite the summary."""
    return _UNPRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    agents: list[AgentResult]
    interrupted_by: str | None
    seconds: float
    # The hash of the audit log's last record, kept outside the log so that a rewritten log is detected.
    audit_head: str | None = None
    # Why the audit log stopped early, when it could not be written.
    audit_problem: str | None = None
    # The violation whose policy stopped the run, and the seconds from it to the last container's exit.
    stopped_by: dict[str, Any] | None = None
    stop_seconds: float | None = None
    violations: int = 0

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return EXIT_VIOLATION
        if self.interrupted_by is not None:
            return EXIT_INTERRUPTED
        if all(agent.state == "succeeded" for agent in self.agents):
            return EXIT_OK
        return EXIT_AGENT_FAILED

    def headline(self) -> str:
        succeeded = sum(agent.state == "succeeded" for agent in self.agents)
        noun = "agent" if len(self.agents) == 1 else "agents"
        text = f"{succeeded} of {len(self.agents)} {noun} succeeded"
        if self.stopped_by:
            text += f"; stopped by a violation ({self.stopped_by['kind']}) of agent {self.stopped_by['agent']}"
            if self.stop_seconds is not None:
                text += f" in {self.stop_seconds:.3f} s"
        elif self.interrupted_by:
            text += f"; interrupted by {self.interrupted_by}"
        if self.violations:
            text += f"; {self.violations} violation(s)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "exit_code": self.exit_code,
            "interrupted_by": self.interrupted_by,
            "seconds": round(self.seconds, 3),
            "audit_head": self.audit_head,
            "audit_problem": self.audit_problem,
            "stopped_by": self.stopped_by,
            "stop_seconds": None if self.stop_seconds is None else round(self.stop_seconds, 3),
            "violations": self.violations,
            "agents": [agent.to_json() for agent in self.agents],
        }
