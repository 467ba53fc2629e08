"""Path locks of the output tree: shared between two users, never deleted, and timeouts that name the holder.

The two-user tests publish once as root in this process and once as uid and
gid 1000 in a subprocess with umask 077. They need root, and their files live
in a fresh folder under the system temporary folder, because pytest's tmp_path
sits below a folder that only root may enter. The same setup shows how the
walk handles a folder that its user cannot read, which root always can.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.publish import PublishRequest, publish_agent, state_folder
from orchestrator.publish.locks import LockRoom, LockTimeout

from .test_publish_support import (
    SUMMARY,
    UNPRIVILEGED_GID,
    UNPRIVILEGED_UID,
    check_ledger_matches_tree,
    leftover_temporaries,
    make_request,
    publish_as_unprivileged_user,
    tree_files,
    unprivileged_python,
    write_files,
)

# Take the lock of one path as a registered publisher would, then hold it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
import filelock
from orchestrator.publish.locks import LockRoom
room = LockRoom(Path(sys.argv[1]), run_id="holder-run")
room.register(["holder-agent"])
lock = filelock.FileLock(str(room.lock_file(sys.argv[2])))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A folder that uid 1000 can enter, removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid 1000 needs root")
    if unprivileged_python() is None:
        pytest.skip("no Python interpreter that uid 1000 can run imports orchestrator")
    base = Path(tempfile.mkdtemp(prefix="orchestrate-publish-test-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def make_output(base: Path, *, group: int, mode: int) -> Path:
    output = base / "output"
    output.mkdir()
    os.chown(output, 0, group)
    os.chmod(output, mode)
    return output


def user_request(base: Path, files: dict[str, str]) -> PublishRequest:
    """Build a request for uid 1000, whose workspace and run folder that user owns."""
    request = make_request(base, "user-agent", run_id="run-user")
    write_files(request.workspace, files)
    for parent in (base / "workspaces", base / "runs"):
        os.chmod(parent, 0o755)
    for top in (request.workspace, request.run_dir):
        for folder, _folders, names in os.walk(top):
            os.chown(folder, UNPRIVILEGED_UID, UNPRIVILEGED_GID)
            for name in names:
                os.chown(Path(folder) / name, UNPRIVILEGED_UID, UNPRIVILEGED_GID)
    return request


def publish_as_root(base: Path, files: dict[str, str], *, mask: int = 0o022) -> None:
    request = make_request(base, "root-agent", run_id="run-root")
    write_files(request.workspace, files)
    with umask(mask):
        report = publish_agent(request)
    assert report.findings == []


def check_lock_modes(output: Path) -> None:
    locks = state_folder(output) / "locks"
    assert stat.S_IMODE(locks.stat().st_mode) == 0o2775
    lock_files = list(locks.iterdir())
    assert lock_files != []
    for lock_file in lock_files:
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o664, f"{lock_file.name} has the wrong mode"


ROOT_FILES = {"root.txt": "from root\n", "docs/root.md": "root page\n", SUMMARY: "root done\n"}
USER_FILES = {"user.txt": "from uid 1000\n", "docs/user.md": "user page\n", SUMMARY: "user done\n"}


def test_root_then_user_publish(shared_base: Path) -> None:
    output = make_output(shared_base, group=UNPRIVILEGED_GID, mode=0o2775)
    publish_as_root(shared_base, ROOT_FILES)

    outcome = publish_as_unprivileged_user(user_request(shared_base, USER_FILES))

    assert outcome["error"] is None
    assert outcome["findings"] == []
    assert sorted(tree_files(output)) == [SUMMARY, "docs/root.md", "docs/user.md", "root.txt", "user.txt"]
    assert (output / SUMMARY).read_text() == "root done\nuser done\n"
    check_lock_modes(output)
    check_ledger_matches_tree(output)


def test_user_then_root_publish(shared_base: Path) -> None:
    output = make_output(shared_base, group=UNPRIVILEGED_GID, mode=0o2775)
    outcome = publish_as_unprivileged_user(user_request(shared_base, USER_FILES))
    assert outcome["error"] is None

    publish_as_root(shared_base, ROOT_FILES)

    assert sorted(tree_files(output)) == [SUMMARY, "docs/root.md", "docs/user.md", "root.txt", "user.txt"]
    assert (output / SUMMARY).read_text() == "user done\nroot done\n"
    check_lock_modes(output)
    check_ledger_matches_tree(output)


def test_root_umask_077_then_user(shared_base: Path) -> None:
    make_output(shared_base, group=UNPRIVILEGED_GID, mode=0o2775)
    publish_as_root(shared_base, ROOT_FILES, mask=0o077)

    outcome = publish_as_unprivileged_user(user_request(shared_base, USER_FILES))

    assert outcome["error"] is None, outcome.get("message")


def test_legacy_lock_file_denied(shared_base: Path) -> None:
    output = make_output(shared_base, group=UNPRIVILEGED_GID, mode=0o2775)
    publish_as_root(shared_base, {"report.md": "root\n"})
    lock_file = LockRoom(state_folder(output), run_id="test").lock_file("report.md")
    # The mode an older release gave lock files under umask 022, which the group cannot write.
    os.chmod(lock_file, 0o644)

    outcome = publish_as_unprivileged_user(user_request(shared_base, {"report.md": "user\n"}))

    assert outcome["error"] == "LockDenied"
    message = outcome["message"]
    assert str(lock_file) in message
    assert "uid 0" in message
    assert "-rw-r--r--" in message
    assert f"chmod -R g+rwXs {output}" in message
    assert (output / "report.md").read_text() == "root\n"
    assert leftover_temporaries(output) == []


def test_unwritable_tree_denied(shared_base: Path) -> None:
    output = make_output(shared_base, group=0, mode=0o755)

    outcome = publish_as_unprivileged_user(user_request(shared_base, USER_FILES))

    assert outcome["error"] in ("LockDenied", "PublishError")
    message = outcome["message"]
    assert str(output) in message
    assert "uid 0" in message
    assert "drwxr-xr-x" in message
    assert f"chmod -R g+rwXs {output}" in message
    assert tree_files(output) == {}
    assert leftover_temporaries(output) == []


def test_unwritable_tree_after_root_denied(shared_base: Path) -> None:
    output = make_output(shared_base, group=0, mode=0o755)
    publish_as_root(shared_base, {"root.txt": "root\n"})

    outcome = publish_as_unprivileged_user(user_request(shared_base, USER_FILES))

    assert outcome["error"] in ("LockDenied", "PublishError")
    assert "uid 0" in outcome["message"]
    assert tree_files(output) == {"root.txt": b"root\n"}
    assert leftover_temporaries(output) == []


def test_user_unreadable_folder(shared_base: Path) -> None:
    output = make_output(shared_base, group=UNPRIVILEGED_GID, mode=0o2775)
    request = user_request(shared_base, {"hidden/data.txt": "data\n", "open.txt": "open\n"})
    os.chmod(request.workspace / "hidden", 0)

    outcome = publish_as_unprivileged_user(request)

    assert outcome["error"] is None
    assert [(kind, path) for kind, path, _detail in outcome["findings"]] == [("unreadable", "hidden")]
    assert outcome["published"] == [["open.txt", "created"]]
    assert tree_files(output) == {"open.txt": b"open\n"}


def test_modes_ignore_umask(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"docs/deep/page.md": "page\n", "run.sh": "#!/bin/sh\n", SUMMARY: "done\n"})
    os.chmod(request.workspace / "run.sh", 0o700)
    request.output.mkdir()

    with umask(0o077):
        publish_agent(request)

    modes = {
        path: stat.S_IMODE((request.output / path).stat().st_mode)
        for path in ("docs", "docs/deep", "docs/deep/page.md", "run.sh", SUMMARY, ".orchestrate/ledger.jsonl")
    }
    assert modes == {
        "docs": 0o2775,
        "docs/deep": 0o2775,
        "docs/deep/page.md": 0o644,
        "run.sh": 0o755,
        SUMMARY: 0o644,
        ".orchestrate/ledger.jsonl": 0o664,
    }
    check_lock_modes(request.output)


def test_lock_files_kept(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"a.txt": "a\n", "docs/b.md": "b\n", SUMMARY: "done\n"})
    publish_agent(request)
    room = LockRoom(state_folder(request.output), run_id="test")
    keys = ["a.txt", "docs/b.md", SUMMARY]
    inodes = {key: room.lock_file(key).stat().st_ino for key in keys}
    ledger = state_folder(request.output) / "ledger.jsonl"
    ledger_inode = ledger.stat().st_ino

    write_files(request.workspace, {"a.txt": "a2\n"})
    publish_agent(make_request(tmp_path, "writer", run_id="run-2"))

    for key in keys:
        assert room.lock_file(key).stat().st_ino == inodes[key], f"lock file of {key!r} was re-created"
    # The ledger is its own lock file: it must never be replaced either.
    assert ledger.stat().st_ino == ledger_inode


def test_held_lock_times_out(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", lock_timeout=1)
    write_files(request.workspace, {"report.md": "report\n"})
    state_folder(request.output).mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_folder(request.output)), "report.md"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"

        with pytest.raises(LockTimeout) as raised:
            publish_agent(request)
    finally:
        holder.communicate(timeout=10)

    message = str(raised.value)
    assert "report.md" in message
    assert f"process {holder.pid}" in message
    assert "holder-run" in message
    assert "holder-agent" in message
    assert not (request.output / "report.md").exists()
    assert leftover_temporaries(request.output) == []


def test_released_lock_publishes(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer", lock_timeout=1)
    write_files(request.workspace, {"report.md": "report\n"})
    state_folder(request.output).mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_folder(request.output)), "report.md"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    holder.communicate(timeout=10)

    report = publish_agent(request)

    assert report.findings == []
    assert (request.output / "report.md").read_text() == "report\n"
