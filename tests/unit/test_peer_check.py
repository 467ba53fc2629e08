"""The control socket's peer check by PID namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator import peer_check
from orchestrator.peer_check import foreign_namespace_reason


def test_own_process_accepted() -> None:
    assert foreign_namespace_reason(os.getpid(), os.getuid()) is None


def test_child_process_accepted() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert foreign_namespace_reason(child.pid, os.getuid()) is None
    finally:
        child.kill()
        child.wait()


def test_invisible_pid_rejected() -> None:
    assert foreign_namespace_reason(0, os.getuid()) == "the peer's process is not visible from the run's PID namespace"


def test_exited_process_rejected() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert foreign_namespace_reason(child.pid, os.getuid()) == f"the peer's process {child.pid} has exited"


def test_other_namespace_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_check, "pid_namespace", lambda process: (1, 2) if process == "self" else (1, 3))
    reason = foreign_namespace_reason(4242, 1000)
    assert reason == "the peer's process 4242 runs in another PID namespace, such as inside a container"


def test_uninspectable_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    def pid_namespace(process: str) -> tuple[int, int]:
        if process == "4242":
            raise PermissionError(1, "Operation not permitted")
        return (1, 2)

    monkeypatch.setattr(peer_check, "pid_namespace", pid_namespace)
    assert foreign_namespace_reason(4242, 0) is None
    assert foreign_namespace_reason(4242, 1000) == "the peer's process 4242 cannot be inspected"
