"""Records of publishing: staged files, published files, findings and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SharedMode = Literal["exclusive", "append"]

# Kinds of finding. Every one of them means a file was not published.
CLAIM_VIOLATION = "claim-violation"
ESCAPE_ATTEMPT = "escape-attempt"
INVALID_NAME = "invalid-name"
LIMIT_EXCEEDED = "limit-exceeded"
UNREADABLE = "unreadable"
WRITE_CONFLICT = "write-conflict"


MAX_LISTED = 1000


@dataclass(frozen=True)
class PublishLimits:
    max_file_size: int
    max_total_bytes: int
    max_files: int


@dataclass(frozen=True)
class Finding:
    kind: str
    path: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail}


@dataclass(frozen=True)
class Staged:
    """A file copied out of a workspace into the private staging folder, not yet published."""

    path: str
    parts: tuple[str, ...]
    staged_name: str
    sha256: str
    size: int
    mode: int
    shared_mode: SharedMode


@dataclass(frozen=True)
class Published:
    path: str
    action: Literal["created", "replaced", "appended", "unchanged"]
    sha256: str
    size: int


@dataclass
class PublishReport:
    agent: str
    published: list[Published] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Things skipped on purpose that are not violations, such as a symlink inside the workspace.
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        # The counts are exact; the lists are cut, so 200,000 planted files cannot bloat the report.
        return {
            "agent": self.agent,
            "published": sum(item.action != "unchanged" for item in self.published),
            "unchanged": sum(item.action == "unchanged" for item in self.published),
            "finding_count": len(self.findings),
            "findings": [finding.to_json() for finding in self.findings[:MAX_LISTED]],
            "notices": self.notices[:MAX_LISTED],
            "seconds": round(self.seconds, 3),
        }
