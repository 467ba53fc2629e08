"""The terminal's raw mode is undone when the process is ended by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios

import pytest

HOLD_RAW = """
import os, sys, time
from orchestrator.terminal import raw_mode
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
with raw_mode(fd):
    print("raw", flush=True)
    time.sleep(30)
"""


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_raw_mode_undone_on_signal(number: signal.Signals) -> None:
    controller, terminal = os.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", HOLD_RAW, os.ttyname(terminal)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline() == b"raw\n"
        assert not termios.tcgetattr(terminal)[3] & termios.ICANON

        child.send_signal(number)
        child.wait(timeout=10)
        local_flags = termios.tcgetattr(terminal)[3]
        assert local_flags & termios.ICANON
        assert local_flags & termios.ECHO
    finally:
        os.close(controller)
        os.close(terminal)
