"""What the publisher refuses to copy out of a workspace: links, special files, odd names and setuid bits.

Every attack here is built from files the test creates under tmp_path. Where a
test checks that nothing leaked, the target contains a unique marker, and the
check searches the whole output tree and run folder for that marker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from orchestrator.publish import PublishReport, PublishRequest, check_workspace, publish_agent, stage
from orchestrator.publish.fsops import open_child_directory, read_regular_file
from orchestrator.publish.model import ESCAPE_ATTEMPT, INVALID_NAME, UNREADABLE, WRITE_CONFLICT

from .test_publish_support import (
    files_containing,
    finding_kinds,
    make_request,
    published_paths,
    special_mode_files,
    tree_files,
    write_files,
)

MARKER = b"marker-7c1f0e9a-outside-the-workspace"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sibling of the workspaces, like another agent's workspace, with a marker file in it."""
    folder = tmp_path / "other-agent"
    write_files(folder, {"secret.txt": MARKER + b"\n", "nested/deep.txt": MARKER + b" deep\n"})
    return folder


def leaked(tmp_path: Path) -> list[Path]:
    return files_containing(tmp_path / "output", MARKER) + files_containing(tmp_path / "runs", MARKER)


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "/proc/self/environ",
        "/dev/zero",
        "{outside}/secret.txt",
        "../../other-agent/secret.txt",
        "{outside}",
        "../../other-agent",
        "/workspace/output/../../etc/passwd",
    ],
)
def test_symlink_outside_is_escape(tmp_path: Path, outside: Path, target: str) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"kept.txt": "kept\n"})
    os.symlink(target.format(outside=outside), request.workspace / "report.md")

    report = publish_agent(request)

    assert finding_kinds(report) == {"report.md": ESCAPE_ATTEMPT}
    assert published_paths(report) == ["kept.txt"]
    assert not os.path.lexists(request.output / "report.md")
    assert leaked(tmp_path) == []


@pytest.mark.parametrize("target", ["real.txt", "./sub/../real.txt", "/workspace/output/real.txt"])
def test_symlink_inside_is_notice(tmp_path: Path, target: str) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"real.txt": "real\n", "sub/keep.txt": "keep\n"})
    os.symlink(target, request.workspace / "link.txt")

    report = publish_agent(request)

    assert report.findings == []
    assert published_paths(report) == ["real.txt", "sub/keep.txt"]
    assert any(notice.startswith("link.txt:") for notice in report.notices)
    assert not os.path.lexists(request.output / "link.txt")


def test_directory_symlink_not_followed(tmp_path: Path, outside: Path) -> None:
    request = make_request(tmp_path, "writer", claims=["docs/**"])
    write_files(request.workspace, {"docs/real/page.md": "page\n"})
    os.symlink("real", request.workspace / "docs" / "alias")
    os.symlink(outside, request.workspace / "docs" / "external")

    report = publish_agent(request)

    assert published_paths(report) == ["docs/real/page.md"]
    assert finding_kinds(report) == {"docs/external": ESCAPE_ATTEMPT}
    assert not os.path.lexists(request.output / "docs" / "alias")
    assert not os.path.lexists(request.output / "docs" / "external")
    assert leaked(tmp_path) == []


def publish_with_deadline(request: PublishRequest, fifo: Path, seconds: float = 10) -> PublishReport:
    """Publish in a thread and fail the test if it takes longer than `seconds`, as a read of a FIFO would."""
    reports: list[PublishReport] = []
    worker = threading.Thread(target=lambda: reports.append(publish_agent(request)), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    if worker.is_alive():
        # Open the write end so a reader stuck on the FIFO returns, then fail.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"publish_agent blocked for {seconds} s")
    assert reports != [], "publish_agent raised in its thread"
    return reports[0]


def test_fifo_does_not_block(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"kept.txt": "kept\n"})
    os.mkfifo(request.workspace / "data")

    report = publish_with_deadline(request, request.workspace / "data")

    assert finding_kinds(report) == {"data": ESCAPE_ATTEMPT}
    assert published_paths(report) == ["kept.txt"]
    assert not os.path.lexists(request.output / "data")


def test_folder_swapped_for_symlink(tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"docs/page.md": "page\n", "kept.txt": "kept\n"})

    def swap_then_open(parent_fd: int, name: str, **options: bool) -> int:
        if name == "docs":
            os.rename("docs", "docs-moved", src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            os.symlink(outside, "docs", dir_fd=parent_fd)
        return open_child_directory(parent_fd, name, **options)

    monkeypatch.setattr(stage, "open_child_directory", swap_then_open)

    report = publish_agent(request)

    assert finding_kinds(report) == {"docs": ESCAPE_ATTEMPT}
    assert published_paths(report) == ["kept.txt"]
    assert leaked(tmp_path) == []


@pytest.mark.parametrize("replacement", ["symlink", "fifo", "hard link"])
def test_file_swapped_before_read(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, replacement: str
) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"report.md": "report\n", "kept.txt": "kept\n"})

    def swap_then_read(dir_fd: int, name: str, *, max_bytes: int) -> tuple[bytes, os.stat_result]:
        if name == "report.md":
            os.unlink(name, dir_fd=dir_fd)
            if replacement == "symlink":
                os.symlink(outside / "secret.txt", name, dir_fd=dir_fd)
            elif replacement == "fifo":
                os.mkfifo(name, dir_fd=dir_fd)
            else:
                os.link(outside / "secret.txt", name, dst_dir_fd=dir_fd)
        return read_regular_file(dir_fd, name, max_bytes=max_bytes)

    monkeypatch.setattr(stage, "read_regular_file", swap_then_read)

    report = publish_with_deadline(request, request.workspace / "report.md")

    assert finding_kinds(report) == {"report.md": ESCAPE_ATTEMPT}
    assert published_paths(report) == ["kept.txt"]
    assert leaked(tmp_path) == []


def test_unix_socket_is_escape(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(request.workspace / "agent.sock"))
    finally:
        listener.close()
    assert stat.S_ISSOCK((request.workspace / "agent.sock").lstat().st_mode)

    report = publish_agent(request)

    assert finding_kinds(report) == {"agent.sock": ESCAPE_ATTEMPT}
    assert report.published == []
    assert not os.path.lexists(request.output / "agent.sock")


def test_device_node_is_escape(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    try:
        # The same device numbers as /dev/zero, which never reaches end of file.
        os.mknod(request.workspace / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("this container does not allow mknod of a character device")

    report = publish_agent(request)

    assert finding_kinds(report) == {"zero": ESCAPE_ATTEMPT}
    assert report.published == []


def test_hard_link_outside_is_escape(tmp_path: Path, outside: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"kept.txt": "kept\n"})
    os.link(outside / "secret.txt", request.workspace / "copy.txt")

    report = publish_agent(request)

    assert finding_kinds(report) == {"copy.txt": ESCAPE_ATTEMPT}
    assert published_paths(report) == ["kept.txt"]
    assert not os.path.lexists(request.output / "copy.txt")
    assert leaked(tmp_path) == []


def test_hard_link_inside_is_published(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"a.txt": "shared inode\n"})
    (request.workspace / "sub").mkdir()
    os.link(request.workspace / "a.txt", request.workspace / "sub" / "b.txt")

    report = publish_agent(request)

    assert report.findings == []
    assert tree_files(request.output) == {"a.txt": b"shared inode\n", "sub/b.txt": b"shared inode\n"}


def test_check_workspace_hard_link_outside(tmp_path: Path, outside: Path) -> None:
    request = make_request(tmp_path, "writer")
    os.link(outside / "secret.txt", request.workspace / "copy.txt")

    report = check_workspace(request)

    assert finding_kinds(report) == {"copy.txt": ESCAPE_ATTEMPT}
    assert not request.output.exists()


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o6755])
def test_setuid_file_is_escape(tmp_path: Path, mode: int) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"tool": "#!/bin/sh\n"})
    os.chmod(request.workspace / "tool", mode)

    report = publish_agent(request)

    assert finding_kinds(report) == {"tool": ESCAPE_ATTEMPT}
    assert report.published == []
    assert not os.path.lexists(request.output / "tool")
    assert special_mode_files(tmp_path / "output") == []


@pytest.mark.parametrize(
    ("source_mode", "published_mode"),
    [(0o755, 0o755), (0o700, 0o755), (0o1755, 0o755), (0o644, 0o644), (0o600, 0o644), (0o666, 0o644)],
)
def test_published_mode(tmp_path: Path, source_mode: int, published_mode: int) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"run.sh": "#!/bin/sh\n"})
    os.chmod(request.workspace / "run.sh", source_mode)

    report = publish_agent(request)

    assert report.findings == []
    assert stat.S_IMODE((request.output / "run.sh").stat().st_mode) == published_mode


def test_control_character_name_invalid(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"bad\nname": "x\n", "tab\there": "x\n", "del\x7f": "x\n", "good.txt": "ok\n"})

    report = publish_agent(request)

    assert sorted(finding.kind for finding in report.findings) == [INVALID_NAME] * 3
    assert published_paths(report) == ["good.txt"]
    assert tree_files(request.output) == {"good.txt": b"ok\n"}


def test_invalid_name_finding_printable(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"x\x1b[2Jy\nz": "x\n"})

    report = publish_agent(request)

    assert [finding.kind for finding in report.findings] == [INVALID_NAME]
    assert report.findings[0].path.isprintable()


def test_symlink_finding_printable(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    os.symlink("/tmp/\x1b[2J\nforged line", request.workspace / "link")

    report = publish_agent(request)

    assert finding_kinds(report) == {"link": ESCAPE_ATTEMPT}
    assert report.findings[0].detail.isprintable()


def test_invalid_utf8_name_invalid(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    workspace = os.fsencode(request.workspace)
    os.close(os.open(workspace + b"/bad\xff.txt", os.O_WRONLY | os.O_CREAT, 0o644))
    os.mkdir(workspace + b"/dir\xfe")
    os.close(os.open(workspace + b"/dir\xfe/inner.txt", os.O_WRONLY | os.O_CREAT, 0o644))

    report = publish_agent(request)

    assert [finding.kind for finding in report.findings] == [INVALID_NAME, INVALID_NAME]
    assert report.published == []
    assert tree_files(request.output) == {}


@pytest.mark.parametrize("as_folder", [False, True])
def test_state_folder_name_invalid(tmp_path: Path, as_folder: bool) -> None:
    request = make_request(tmp_path, "writer")
    if as_folder:
        write_files(request.workspace, {".orchestrate/ledger.jsonl": '{"path": "x", "owner": "forged"}\n'})
    else:
        write_files(request.workspace, {".orchestrate": "forged\n"})
    write_files(request.workspace, {"sub/.orchestrate": "nested is fine\n"})

    report = publish_agent(request)

    assert finding_kinds(report) == {".orchestrate": INVALID_NAME}
    assert published_paths(report) == ["sub/.orchestrate"]


def test_temporary_prefix_name_invalid(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"docs/.orchestrate-tmp-1-abc": "x\n"})

    report = publish_agent(request)

    assert finding_kinds(report) == {"docs/.orchestrate-tmp-1-abc": INVALID_NAME}
    assert report.published == []


def test_git_folder_never_published(tmp_path: Path) -> None:
    # A published .git would make part of the output tree a repository whose agent-written hooks and
    # core.fsmonitor run on the host as soon as git, or a shell prompt calling git, runs there.
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {
        "repo/.git/config": "[core]\n\tfsmonitor = touch /tmp/owned\n",
        "repo/.git/HEAD": "ref: refs/heads/main\n",
        "other/.git": "gitdir: ../repo/.git\n",
        "cased/.GIT/config": "[core]\n",
        "repo/main.py": "print()\n",
    })

    report = publish_agent(request)

    assert finding_kinds(report) == {"repo/.git": INVALID_NAME, "other/.git": INVALID_NAME,
                                     "cased/.GIT": INVALID_NAME}
    assert published_paths(report) == ["repo/main.py"]
    assert tree_files(request.output) == {"repo/main.py": b"print()\n"}


def test_unreadable_folder_consistent(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"hidden/data.txt": "data\n", "open.txt": "open\n"})
    os.chmod(request.workspace / "hidden", 0)
    try:
        report = publish_agent(request)
    finally:
        os.chmod(request.workspace / "hidden", 0o755)

    # Root reads the folder anyway, and anyone else gets an unreadable finding for it.
    published = published_paths(report)
    assert "open.txt" in published
    if "hidden/data.txt" in published:
        assert report.findings == []
        assert (request.output / "hidden" / "data.txt").read_bytes() == b"data\n"
    else:
        assert finding_kinds(report) == {"hidden": UNREADABLE}
        assert not (request.output / "hidden" / "data.txt").exists()


def test_output_folder_symlink_not_followed(tmp_path: Path, outside: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"docs/page.md": "page\n", "report.md": "report\n"})
    request.output.mkdir()
    os.symlink(outside, request.output / "docs")
    os.symlink(outside / "secret.txt", request.output / "report.md")

    report = publish_agent(request)

    assert finding_kinds(report) == {"docs/page.md": WRITE_CONFLICT, "report.md": WRITE_CONFLICT}
    assert not (outside / "page.md").exists()
    assert (outside / "secret.txt").read_bytes() == MARKER + b"\n"
