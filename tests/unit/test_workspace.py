"""Workspace scans and removal, including what an agent can do to hide files.

CI runs as root, which reads through mode-000 entries, so the scan must report
them by their permission bits and not only when reading fails.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.workspace import remove_tree, scan

NOBODY = 65534


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "docs").mkdir(parents=True)
    (root / "report.md").write_bytes(b"x" * 100)
    (root / "docs" / "a.txt").write_bytes(b"y" * 20)
    (root / "docs" / "empty.txt").write_bytes(b"")
    return root


@pytest.fixture
def locked(workspace: Path) -> Iterator[Path]:
    """The workspace with a mode-000 file and a mode-000 folder that contains a file."""
    folder = workspace / "hidden"
    folder.mkdir()
    (folder / "inside.txt").write_bytes(b"z" * 7)
    (workspace / "secret.txt").write_bytes(b"s" * 3)
    os.chmod(folder, 0)
    os.chmod(workspace / "secret.txt", 0)
    yield workspace
    # Let pytest delete tmp_path when the tests do not run as root.
    for path in (folder, workspace / "secret.txt"):
        if path.exists():
            os.chmod(path, 0o700)


def test_scan_counts_files_and_bytes(workspace: Path) -> None:
    result = scan(workspace)

    assert result.files == 3
    assert result.bytes == 120
    assert result.findings == []


def test_scan_skips_symlink_to_outside_folder(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"o" * 5000)
    (workspace / "link").symlink_to(outside, target_is_directory=True)

    result = scan(workspace)

    assert result.files == 3
    assert result.bytes == 120


def test_scan_skips_symlink_to_file(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"o" * 5000)
    (workspace / "link.bin").symlink_to(tmp_path / "outside.bin")

    result = scan(workspace)

    assert result.bytes == 120


def test_scan_reports_unreadable_folder(locked: Path) -> None:
    result = scan(locked)

    assert any(finding.startswith("hidden: folder made unreadable") for finding in result.findings), result.findings


def test_scan_reports_unreadable_file(locked: Path) -> None:
    result = scan(locked)

    assert any(finding.startswith("secret.txt: file made unreadable") for finding in result.findings), result.findings


def test_scan_finding_shows_mode(locked: Path) -> None:
    result = scan(locked)

    assert "secret.txt: file made unreadable (mode ----------)" in result.findings


def test_scan_reports_write_only_folder(workspace: Path) -> None:
    # Without the execute bit only root can enter the folder, even with read and write bits set.
    os.chmod(workspace / "docs", 0o600)
    try:
        result = scan(workspace)
    finally:
        os.chmod(workspace / "docs", 0o700)

    assert any(finding.startswith("docs: folder made unreadable") for finding in result.findings), result.findings


def test_remove_tree_removes_locked_folder(locked: Path) -> None:
    remove_tree(locked)

    assert not locked.exists()


def test_remove_tree_keeps_symlink_target(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n", encoding="utf-8")
    (workspace / "link").symlink_to(outside, target_is_directory=True)

    remove_tree(workspace)

    assert (outside / "keep.txt").exists()


def test_remove_tree_missing_folder_is_no_error(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")

    assert not (tmp_path / "absent").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand the tree to another user")
def test_remove_tree_restores_permissions_as_owner(tmp_path: Path) -> None:
    # Root reads through mode 000, so the permission repair runs only for an ordinary owner.
    # A forked child enters the folder before it drops to user `nobody`, so the root-only tmp_path does not block it.
    area = tmp_path / "area"
    tree = area / "tree"
    (tree / "locked" / "deeper").mkdir(parents=True)
    (tree / "locked" / "deeper" / "file.txt").write_text("x\n", encoding="utf-8")
    for path in (area, tree, tree / "locked", tree / "locked" / "deeper", tree / "locked" / "deeper" / "file.txt"):
        os.chown(path, NOBODY, NOBODY)
    os.chmod(tree / "locked" / "deeper", 0)
    os.chmod(tree / "locked", 0)

    status = run_as_nobody(area, lambda: remove_tree(Path("tree")))

    assert status == 0, f"remove_tree failed as its owner (exit status {status})"
    assert not tree.exists()


def run_as_nobody(folder: Path, action: Callable[[], None]) -> int:
    """Run `action` in a forked child that works in `folder` as user `nobody`, and return its exit status."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.chdir(folder)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, wait_status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(wait_status)
