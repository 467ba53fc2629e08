"""Evidence collection from hostile workspaces: links, FIFOs, devices, odd names, caps and races.

CI runs as root, which reads through mode-000 entries, so unreadable entries
are simulated by an os.open that raises PermissionError or by a folder that
vanishes during the walk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import EnvironmentProblem, InternalError
from orchestrator.evidence import EvidenceSource, collect_evidence, list_workspace

SECRET = b"host secret, must never be read\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "docs").mkdir(parents=True)
    (root / "report.md").write_bytes(b"report\n")
    (root / "docs" / "notes.txt").write_bytes(b"notes\n")
    return root


def by_path(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in listing["entries"]}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OpenFunction = Callable[..., int]


def patch_open(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[OpenFunction, Any, Any], int]) -> None:
    """Route os.open calls for the entry `name` (opened relative to a folder) through `action`."""
    real_open = os.open

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and path == name:
            return action(real_open, path, dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)


# Listing


def test_listing_hashes_regular_files(workspace: Path) -> None:
    entries = by_path(list_workspace(workspace))

    assert entries["report.md"]["sha256"] == sha256(b"report\n")
    assert entries["docs/notes.txt"]["sha256"] == sha256(b"notes\n")
    assert entries["report.md"]["type"] == "file"
    assert entries["report.md"]["size"] == 7
    assert entries["docs"]["type"] == "directory"
    assert entries["docs"]["sha256"] is None
    assert entries["."]["type"] == "directory"


def test_listing_records_owner_mode_and_time(workspace: Path) -> None:
    os.chmod(workspace / "report.md", 0o640)
    info = (workspace / "report.md").lstat()

    entry = by_path(list_workspace(workspace))["report.md"]

    assert entry["mode"] == "0640"
    assert entry["uid"] == info.st_uid
    assert entry["gid"] == info.st_gid
    assert entry["mtime_ns"] == info.st_mtime_ns
    assert entry["mtime"].startswith(time.strftime("%Y", time.gmtime(info.st_mtime)))
    assert entry["problem"] is None


def test_listing_symlink_not_followed(workspace: Path, secret: Path, tmp_path: Path) -> None:
    (workspace / "leak").symlink_to(secret)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_bytes(SECRET)
    (workspace / "tunnel").symlink_to(outside, target_is_directory=True)

    listing = list_workspace(workspace)
    entries = by_path(listing)

    assert entries["leak"]["type"] == "symlink"
    assert entries["leak"]["link_target"] == str(secret)
    assert entries["leak"]["sha256"] is None
    assert entries["tunnel"]["type"] == "symlink"
    assert "tunnel/inner.txt" not in entries
    assert sha256(SECRET) not in json.dumps(listing)


def test_listing_fifo_does_not_block(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")

    started = time.monotonic()
    entry = by_path(list_workspace(workspace))["pipe"]
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    assert entry["type"] == "fifo"
    assert entry["sha256"] is None


def test_listing_file_swapped_for_fifo(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent swaps a file for a FIFO between the walk's lstat and its open.
    def swap(real_open: OpenFunction, path: Any, dir_fd: Any) -> int:
        os.unlink(path, dir_fd=dir_fd)
        os.mkfifo(path, dir_fd=dir_fd)
        return real_open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)

    patch_open(monkeypatch, "report.md", swap)

    started = time.monotonic()
    listing = list_workspace(workspace)
    elapsed = time.monotonic() - started
    entry = by_path(listing)["report.md"]

    assert elapsed < 0.5
    assert entry["sha256"] is None
    assert "replaced" in entry["problem"]
    assert {"path": "report.md", "problem": entry["problem"]} in listing["problems"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_listing_device_not_opened(workspace: Path) -> None:
    os.mknod(workspace / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))

    entry = by_path(list_workspace(workspace))["zero"]

    assert entry["type"] == "char-device"
    assert entry["device"] == "1:5"
    assert entry["sha256"] is None


def test_listing_flags_hard_link_and_setuid(workspace: Path) -> None:
    os.link(workspace / "report.md", workspace / "twin.md")
    tool = workspace / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    group_tool = workspace / "group-tool"
    group_tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(group_tool, 0o2755)

    entries = by_path(list_workspace(workspace))

    assert entries["twin.md"]["nlink"] == 2
    assert entries["twin.md"]["hard_link"] is True
    assert entries["report.md"]["hard_link"] is True
    assert entries["docs/notes.txt"]["hard_link"] is False
    assert entries["tool"]["setuid"] is True
    assert entries["tool"]["mode"] == "4755"
    assert entries["tool"]["setgid"] is False
    assert entries["group-tool"]["setgid"] is True


def test_listing_depth_cap_truncates(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "file").write_bytes(b"x")

    listing = list_workspace(root, max_depth=2)
    entries = by_path(listing)

    assert listing["truncated"] is True
    assert "deeper than 2" in listing["truncation"]
    assert "a/b" in entries
    assert "a/b/c" not in entries
    assert entries["a/b"]["note"] == "not listed: deeper than 2 levels"


def test_listing_entry_cap_truncates(workspace: Path) -> None:
    for number in range(20):
        (workspace / f"file-{number:02d}").write_bytes(b"x")

    listing = list_workspace(workspace, max_entries=5)

    assert listing["truncated"] is True
    assert "more than 5 entries" in listing["truncation"]
    assert len(listing["entries"]) == 5


def test_listing_under_caps_not_truncated(workspace: Path) -> None:
    listing = list_workspace(workspace, max_entries=4, max_depth=2)

    assert listing["truncated"] is False
    assert listing["truncation"] is None
    assert len(listing["entries"]) == 4


def test_listing_past_deadline_truncates(workspace: Path) -> None:
    listing = list_workspace(workspace, deadline=time.monotonic() - 1)

    assert listing["truncated"] is True
    assert "deadline" in listing["truncation"]
    assert "report.md" not in by_path(listing)


def test_listing_hash_cap_skips_large_file(tmp_path: Path) -> None:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "a-small").write_bytes(b"12345")
    (root / "b-large").write_bytes(b"x" * 100)
    (root / "c-small").write_bytes(b"123")

    listing = list_workspace(root, max_hash_bytes=10)
    entries = by_path(listing)

    assert entries["a-small"]["sha256"] == sha256(b"12345")
    assert entries["b-large"]["sha256"] is None
    assert entries["b-large"]["note"] == "not hashed: over the cap"
    assert entries["c-small"]["sha256"] == sha256(b"123")
    assert listing["hashed_bytes"] == 8
    assert listing["problems"] == []


def test_listing_odd_names_give_valid_json(workspace: Path) -> None:
    root = os.fsencode(workspace)
    for name in (b"line\nbreak", b"bad-\xff\xfe", b"esc-\x1b[31m"):
        with open(os.path.join(root, name), "wb") as file:
            file.write(b"odd\n")

    text = json.dumps(list_workspace(workspace))
    text.encode("ascii")  # raises if a raw byte or surrogate reached the JSON text
    entries = by_path(json.loads(text))

    assert entries["line\nbreak"]["sha256"] == sha256(b"odd\n")
    assert entries["bad-\\xff\\xfe"]["path_hex"] == b"bad-\xff\xfe".hex()
    assert entries["esc-\x1b[31m"]["path_hex"] is None


def test_listing_permission_denied_folder(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(_real_open: OpenFunction, path: Any, _dir_fd: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    patch_open(monkeypatch, "docs", deny)

    listing = list_workspace(workspace)
    entries = by_path(listing)

    assert entries["docs"]["problem"] == "cannot be opened (Permission denied)"
    assert listing["problems"] == [{"path": "docs", "problem": "cannot be opened (Permission denied)"}]
    assert "docs/notes.txt" not in entries
    assert entries["report.md"]["sha256"] == sha256(b"report\n")


def test_listing_permission_denied_file(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(_real_open: OpenFunction, path: Any, _dir_fd: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    patch_open(monkeypatch, "report.md", deny)

    listing = list_workspace(workspace)
    entry = by_path(listing)["report.md"]

    assert entry["sha256"] is None
    assert entry["problem"] == "cannot be opened (Permission denied)"
    assert len(listing["problems"]) == 1


def test_listing_folder_vanishing_midway(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def remove_first(real_open: OpenFunction, path: Any, dir_fd: Any) -> int:
        os.unlink("docs/notes.txt", dir_fd=dir_fd)
        os.rmdir(path, dir_fd=dir_fd)
        return real_open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)

    patch_open(monkeypatch, "docs", remove_first)

    listing = list_workspace(workspace)

    assert by_path(listing)["docs"]["problem"] == "vanished during the walk"
    assert listing["problems"][0]["path"] == "docs"


def test_listing_folder_swapped_for_symlink(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_bytes(SECRET)

    def swap(real_open: OpenFunction, path: Any, dir_fd: Any) -> int:
        os.rename(path, "docs-old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.symlink(outside, path, dir_fd=dir_fd)
        return real_open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)

    patch_open(monkeypatch, "docs", swap)

    listing = list_workspace(workspace)

    assert "became a symlink" in by_path(listing)["docs"]["problem"]
    assert "docs/inner.txt" not in by_path(listing)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through mode 000")
def test_listing_mode_000_folder_as_user(workspace: Path) -> None:
    os.chmod(workspace / "docs", 0)
    try:
        listing = list_workspace(workspace)
    finally:
        os.chmod(workspace / "docs", 0o700)

    assert "Permission denied" in by_path(listing)["docs"]["problem"]


def test_listing_mode_000_folder_recorded(workspace: Path) -> None:
    os.chmod(workspace / "docs", 0)
    try:
        entry = by_path(list_workspace(workspace))["docs"]
    finally:
        os.chmod(workspace / "docs", 0o700)

    assert entry["mode"] == "0000"


def test_listing_missing_workspace(tmp_path: Path) -> None:
    listing = list_workspace(tmp_path / "absent")

    assert listing["entries"][0]["path"] == "."
    assert listing["problems"] == [{"path": ".", "problem": "vanished during the walk"}]


def test_listing_workspace_symlink_not_followed(workspace: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(workspace, target_is_directory=True)

    listing = list_workspace(link)

    assert len(listing["entries"]) == 1
    assert "symlink" in listing["problems"][0]["problem"]


# Collecting


def make_source(tmp_path: Path, workspace: Path, agent: str = "reader") -> EvidenceSource:
    agents = tmp_path / "runs" / "run-1" / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    log_path = agents / f"{agent}.log"
    log_path.write_bytes(f"output of {agent}\n".encode())
    inspect_path = agents / f"{agent}.inspect.json"
    inspect_path.write_text(json.dumps({"Id": "abc", "Config": {"Env": ["TOKEN=<redacted>"]}}), encoding="utf-8")
    return EvidenceSource(agent=agent, workspace=workspace, log_path=log_path, inspect_path=inspect_path)


VIOLATIONS = [{"agent": "reader", "violation": "escape-attempt", "detail": "bad-\udcff name"}]


def test_collect_writes_expected_files(tmp_path: Path, workspace: Path) -> None:
    source = make_source(tmp_path, workspace)
    run_dir = tmp_path / "runs" / "run-1"

    files = collect_evidence(run_dir, [source], VIOLATIONS)
    evidence = run_dir / "evidence"

    assert sorted(item.path for item in files) == [
        "collection.json", "reader/inspect.json", "reader/output.log", "reader/workspace.json", "violations.json",
    ]
    assert {item.folder for item in files} == {"evidence"}
    assert (evidence / "reader" / "output.log").read_bytes() == b"output of reader\n"
    assert (evidence / "reader" / "inspect.json").read_bytes() == source.inspect_path.read_bytes()
    assert json.loads((evidence / "violations.json").read_text())[0]["detail"] == "bad-\\xff name"
    listing = json.loads((evidence / "reader" / "workspace.json").read_text())
    assert by_path(listing)["report.md"]["sha256"] == sha256(b"report\n")


def test_collect_returns_matching_hashes(tmp_path: Path, workspace: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"

    files = collect_evidence(run_dir, [make_source(tmp_path, workspace)], VIOLATIONS)

    for item in files:
        data = (run_dir / item.folder / item.path).read_bytes()
        assert item.sha256 == sha256(data), item.path
        assert item.size == len(data), item.path


def test_collect_makes_evidence_read_only(tmp_path: Path, workspace: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"

    collect_evidence(run_dir, [make_source(tmp_path, workspace)], VIOLATIONS)
    evidence = run_dir / "evidence"

    for path in [evidence, *evidence.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o555 if path.is_dir() else 0o444
        assert mode == expected, f"{path} has mode {mode:o}"


def test_collect_second_run_uses_new_folder(tmp_path: Path, workspace: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    source = make_source(tmp_path, workspace)
    collect_evidence(run_dir, [source], VIOLATIONS)
    first = (run_dir / "evidence" / "violations.json").read_bytes()

    files = collect_evidence(run_dir, [source], [])
    third = collect_evidence(run_dir, [source], [])

    assert {item.folder for item in files} == {"evidence-2"}
    assert {item.folder for item in third} == {"evidence-3"}
    assert (run_dir / "evidence" / "violations.json").read_bytes() == first
    assert json.loads((run_dir / "evidence-2" / "violations.json").read_text()) == []


def test_collect_symlinked_log_not_followed(tmp_path: Path, workspace: Path, secret: Path) -> None:
    source = make_source(tmp_path, workspace)
    source.log_path.unlink()
    source.log_path.symlink_to(secret)
    run_dir = tmp_path / "runs" / "run-1"

    files = collect_evidence(run_dir, [source], VIOLATIONS)
    evidence = run_dir / "evidence"
    note = json.loads((evidence / "collection.json").read_text())["agents"]["reader"]["output.log"]

    assert "reader/output.log" not in {item.path for item in files}
    assert not (evidence / "reader" / "output.log").exists()
    assert "is a symlink to" in note
    for path in evidence.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_bytes(), path


def test_collect_fifo_log_not_blocking(tmp_path: Path, workspace: Path) -> None:
    source = make_source(tmp_path, workspace)
    source.log_path.unlink()
    os.mkfifo(source.log_path)

    started = time.monotonic()
    files = collect_evidence(tmp_path / "runs" / "run-1", [source], [])

    assert time.monotonic() - started < 0.5
    assert "reader/output.log" not in {item.path for item in files}


def test_collect_missing_sources_noted(tmp_path: Path, workspace: Path) -> None:
    source = make_source(tmp_path, workspace)
    source.log_path.unlink()
    source.inspect_path.unlink()
    run_dir = tmp_path / "runs" / "run-1"

    files = collect_evidence(run_dir, [source], [])
    report = json.loads((run_dir / "evidence" / "collection.json").read_text())

    assert sorted(item.path for item in files) == ["collection.json", "reader/workspace.json", "violations.json"]
    assert report["agents"]["reader"]["output.log"].startswith("missing:")
    assert report["agents"]["reader"]["inspect.json"].startswith("missing:")


def test_collect_run_hash_cap(tmp_path: Path, workspace: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"

    collect_evidence(run_dir, [make_source(tmp_path, workspace)], [], max_hash_bytes=3)
    entries = by_path(json.loads((run_dir / "evidence" / "reader" / "workspace.json").read_text()))

    assert entries["report.md"]["note"] == "not hashed: over the cap"


def test_collect_two_agents(tmp_path: Path, workspace: Path) -> None:
    other = tmp_path / "other-workspace"
    other.mkdir()
    (other / "x.txt").write_bytes(b"x")
    sources = [make_source(tmp_path, workspace, "reader"), make_source(tmp_path, other, "writer")]
    run_dir = tmp_path / "runs" / "run-1"

    collect_evidence(run_dir, sources, [])
    listing = json.loads((run_dir / "evidence" / "writer" / "workspace.json").read_text())

    assert listing["agent"] == "writer"
    assert by_path(listing)["x.txt"]["sha256"] == sha256(b"x")
    assert (run_dir / "evidence" / "writer" / "output.log").read_bytes() == b"output of writer\n"


def test_collect_failed_write_leaves_no_temporary(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    source = make_source(tmp_path, workspace)
    real_rename = os.rename

    def failing_rename(source_name: Any, target: Any, **kwargs: Any) -> None:
        if target == "workspace.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        real_rename(source_name, target, **kwargs)

    monkeypatch.setattr(os, "rename", failing_rename)

    with pytest.raises(EnvironmentProblem, match="No space left on device"):
        collect_evidence(run_dir, [source], VIOLATIONS)

    names = [path.name for path in (run_dir / "evidence").rglob("*")]
    assert not [name for name in names if ".tmp-" in name]
    assert "output.log" in names
    assert stat.S_IMODE((run_dir / "evidence").stat().st_mode) == 0o555


@pytest.mark.parametrize("name", ["", "..", "a/b", ".hidden"])
def test_collect_rejects_unsafe_agent_name(tmp_path: Path, workspace: Path, name: str) -> None:
    source = make_source(tmp_path, workspace)
    unsafe = EvidenceSource(name, source.workspace, source.log_path, source.inspect_path)

    with pytest.raises(InternalError, match="not a plain folder name"):
        collect_evidence(tmp_path / "runs" / "run-1", [unsafe], [])

    assert not (tmp_path / "runs" / "run-1" / "evidence").exists()
