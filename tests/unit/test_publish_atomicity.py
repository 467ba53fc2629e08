"""A publish that fails halfway: each path keeps its old or gets its new content, and no debris is left.

The failure is a full disk on the Nth `os.rename`, the call that moves a
finished file into place. The rename is patched on the `os` module itself, which
the publisher shares with every other module.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import orchestrator.publish as publish_module
from orchestrator.publish import PublishError, publish_agent, state_folder

from .test_publish_support import (
    SUMMARY,
    check_ledger_matches_tree,
    leftover_temporaries,
    make_request,
    tree_files,
    write_files,
)

OLD = {"a.txt": b"old a\n", "b.txt": b"old b\n", "docs/c.txt": b"old c\n"}
NEW = {"a.txt": b"new a\n" * 100, "b.txt": b"new b\n" * 100, "docs/c.txt": b"new c\n" * 100, "docs/d.txt": b"new d\n"}


def fail_nth_rename(monkeypatch: pytest.MonkeyPatch, failing_call: int) -> list[int]:
    """Make the `failing_call`-th os.rename raise ENOSPC, and return the list that counts the calls."""
    calls: list[int] = []
    real_rename: Callable[..., None] = os.rename

    def rename(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_rename(*args, **kwargs)

    monkeypatch.setattr("orchestrator.publish.os.rename", rename)
    real_exchange: Callable[..., bool] = publish_module.exchange

    def exchange(*args: object) -> bool:
        # A replacement swaps names with renameat2; count it as the move it is.
        calls.append(1)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_exchange(*args)

    monkeypatch.setattr("orchestrator.publish.exchange", exchange)
    return calls


def check_no_debris(output: Path) -> None:
    assert leftover_temporaries(output) == []
    assert list((state_folder(output) / "staging").iterdir()) == []


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_failed_rename_leaves_old_or_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    output = tmp_path / "output"
    write_files(make_request(tmp_path, "writer", run_id="run-1").workspace, OLD)
    publish_agent(make_request(tmp_path, "writer", run_id="run-1"))
    request = make_request(tmp_path, "writer", run_id="run-2")
    write_files(request.workspace, NEW)
    calls = fail_nth_rename(monkeypatch, failing_call)

    with pytest.raises(PublishError, match="free some disk space"):
        publish_agent(request)

    assert len(calls) == failing_call
    files = tree_files(output)
    for path, content in files.items():
        assert content in (OLD.get(path), NEW[path]), f"{path} has neither its old nor its new content"
    assert sum(files[path] == NEW[path] for path in files) == failing_call - 1
    check_no_debris(output)
    check_ledger_matches_tree(output)


def test_publish_after_failure_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, NEW)
    fail_nth_rename(monkeypatch, 2)
    with pytest.raises(PublishError):
        publish_agent(request)
    monkeypatch.undo()

    report = publish_agent(request)

    assert report.findings == []
    assert tree_files(tmp_path / "output") == NEW
    check_ledger_matches_tree(tmp_path / "output")


def test_failed_append_rename_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "output"
    alpha = make_request(tmp_path, "alpha")
    write_files(alpha.workspace, {SUMMARY: "alpha\n"})
    publish_agent(alpha)
    beta = make_request(tmp_path, "beta")
    write_files(beta.workspace, {SUMMARY: "beta\n"})
    fail_nth_rename(monkeypatch, 1)

    with pytest.raises(PublishError):
        publish_agent(beta)

    assert (output / SUMMARY).read_bytes() == b"alpha\n"
    check_no_debris(output)


@pytest.mark.parametrize("failing_record", [1, 3])
def test_failed_ledger_write_undoes_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_record: int) -> None:
    # A full disk that refuses the ledger record must leave the file as it was, not published unrecorded.
    output = tmp_path / "output"
    write_files(make_request(tmp_path, "writer", run_id="run-1").workspace, OLD)
    publish_agent(make_request(tmp_path, "writer", run_id="run-1"))
    request = make_request(tmp_path, "writer", run_id="run-2")
    write_files(request.workspace, NEW)
    calls: list[int] = []
    real_write = publish_module.Ledger._write_whole

    def write_whole(ledger: object, line: bytes, before: int) -> None:
        calls.append(1)
        if len(calls) == failing_record:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(ledger, line, before)  # type: ignore[arg-type]

    monkeypatch.setattr(publish_module.Ledger, "_write_whole", write_whole)

    with pytest.raises(PublishError, match="free some disk space"):
        publish_agent(request)

    files = tree_files(output)
    assert sum(files[path] == NEW[path] for path in files) == failing_record - 1
    check_no_debris(output)
    check_ledger_matches_tree(output)
