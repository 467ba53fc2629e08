"""Files open for writing, found through /proc as the monitor does before an early publish."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.openfiles import container_processes, open_for_writing


def test_open_for_writing_finds_writers(tmp_path: Path) -> None:
    writing = tmp_path / "writing.txt"
    reading = tmp_path / "reading.txt"
    reading.write_text("done\n")
    (tmp_path / "closed.txt").write_text("done\n")
    with writing.open("w") as _held, reading.open("r") as _read:
        busy = open_for_writing(os.getpid(), str(tmp_path))
    assert busy is not None
    assert "writing.txt" in busy
    assert "reading.txt" not in busy
    assert "closed.txt" not in busy
    assert "writing.txt" not in (open_for_writing(os.getpid(), str(tmp_path)) or set())


def test_processes_that_cannot_be_read_mean_unknown() -> None:
    assert container_processes(0) is None
    assert open_for_writing(-1, "/workspace/output") is None
    own = container_processes(os.getpid())
    assert own is not None and os.getpid() in own
