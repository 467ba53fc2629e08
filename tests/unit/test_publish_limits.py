"""Per-agent publishing limits and claims: which files are left out, and the finding that reports each one."""

from __future__ import annotations

from pathlib import Path

from orchestrator.publish import PublishLimits, check_workspace, publish_agent
from orchestrator.publish.model import CLAIM_VIOLATION, LIMIT_EXCEEDED

from .test_publish_support import finding_kinds, make_request, published_paths, tree_files, write_files


def limits(max_file_size: int = 1000, max_total_bytes: int = 100_000, max_files: int = 100) -> PublishLimits:
    return PublishLimits(max_file_size=max_file_size, max_total_bytes=max_total_bytes, max_files=max_files)


def test_file_over_size_limit(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", limits=limits(max_file_size=10))
    write_files(request.workspace, {"big.bin": b"x" * 11, "fits.bin": b"y" * 10})

    report = publish_agent(request)

    assert finding_kinds(report) == {"big.bin": LIMIT_EXCEEDED}
    assert published_paths(report) == ["fits.bin"]
    assert not (request.output / "big.bin").exists()


def test_more_files_than_limit(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", limits=limits(max_files=3))
    write_files(request.workspace, {f"sub{index % 2}/file{index}.txt": f"{index}\n" for index in range(7)})

    report = publish_agent(request)

    assert [finding.kind for finding in report.findings] == [LIMIT_EXCEEDED]
    assert len(report.published) == 3
    assert len(tree_files(request.output)) == 3


def test_file_count_at_limit(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", limits=limits(max_files=3))
    write_files(request.workspace, {f"file{index}.txt": f"{index}\n" for index in range(3)})

    report = publish_agent(request)

    assert report.findings == []
    assert len(report.published) == 3


def test_total_bytes_over_limit(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", limits=limits(max_total_bytes=25))
    write_files(request.workspace, {"a.txt": b"a" * 10, "b.txt": b"b" * 10, "c.txt": b"c" * 10})

    report = publish_agent(request)

    assert finding_kinds(report) == {"c.txt": LIMIT_EXCEEDED}
    assert published_paths(report) == ["a.txt", "b.txt"]
    assert sum(len(content) for content in tree_files(request.output).values()) <= 25


def test_check_workspace_reports_limits(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", limits=limits(max_file_size=10))
    write_files(request.workspace, {"big.bin": b"x" * 11})

    report = check_workspace(request)

    assert finding_kinds(report) == {"big.bin": LIMIT_EXCEEDED}
    assert not request.output.exists()


def test_file_outside_claims(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", claims=["docs/**", "README.md"])
    write_files(
        request.workspace,
        {"docs/a.md": "a\n", "docs/deep/b.md": "b\n", "README.md": "r\n", "notes.txt": "n\n", "src/docs/c.md": "c\n"},
    )

    report = publish_agent(request)

    assert finding_kinds(report) == {"notes.txt": CLAIM_VIOLATION, "src/docs/c.md": CLAIM_VIOLATION}
    assert published_paths(report) == ["README.md", "docs/a.md", "docs/deep/b.md"]
    assert sorted(tree_files(request.output)) == ["README.md", "docs/a.md", "docs/deep/b.md"]


def test_no_claims_publishes_everything(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", claims=[])
    files = {"docs/a.md": b"a\n", "notes.txt": b"n\n", ".hidden": b"h\n", "deep/er/x.bin": b"\x00\xff"}
    write_files(request.workspace, files)

    report = publish_agent(request)

    assert report.findings == []
    assert tree_files(request.output) == files
