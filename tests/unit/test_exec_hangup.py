"""SIGHUP for a user's exec reaches only a process of the exec's container."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from orchestrator.exec_hangup import hang_up

CONTAINER_ID = "c0ffee" * 10 + "c0ffee12"[:4]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that exits with 0 on SIGHUP and names CONTAINER_ID among its arguments, as `runsc exec` does."""
    script = ("import signal, sys, time; signal.signal(signal.SIGHUP, lambda *_: sys.exit(0)); print('ready', "
              "flush=True); time.sleep(30)")
    process = subprocess.Popen([sys.executable, "-c", script, CONTAINER_ID], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    yield process
    process.kill()
    process.wait()


def test_process_of_container_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    assert hang_up(sleeper.pid, CONTAINER_ID) is None
    assert sleeper.wait(timeout=10) == 0


def test_process_of_other_container_spared(sleeper: subprocess.Popen[bytes]) -> None:
    other = "0" * 64
    assert hang_up(sleeper.pid, other) == f"process {sleeper.pid} is not a process of container 000000000000"
    assert sleeper.poll() is None


def test_ended_process_reported() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert hang_up(process.pid, CONTAINER_ID) == f"process {process.pid} has ended"
