"""The user's terminal while it is connected to an agent: raw mode, window size and the detach keys."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# Ctrl-P then Ctrl-Q, the sequence `docker attach` uses too.
DETACH_KEYS = b"\x10\x11"


def window_size(fd: int) -> tuple[int, int] | None:
    """Return the terminal's size as (rows, columns), or None when `fd` is not a terminal."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols, _x, _y = struct.unpack("HHHH", packed)
    if rows == 0 or cols == 0:
        return None
    return rows, cols


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put a terminal in raw mode, so Ctrl-C and every other key reach the program as bytes; always restore it.

    SIGTERM, SIGHUP and SIGQUIT are turned into SystemExit meanwhile (in the main thread only), so the restore
    runs on those exits too. In raw mode Ctrl-\\ is a byte for the program, so a SIGQUIT comes only from `kill`.
    Nothing restores a terminal after SIGKILL; `stty sane` or `reset` does it then.
    """
    saved = termios.tcgetattr(fd)
    previous = _exit_on_signals()
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        _restore_handlers(previous)


Handlers = dict[signal.Signals, object]


def _exit_on_signals() -> Handlers:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def leave(number: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + number)

    previous: Handlers = {}
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        handler = signal.getsignal(number)
        # Only default handlers are replaced: a running orchestrate run has its own, which stop the agents.
        if handler is signal.SIG_DFL:
            previous[number] = signal.signal(number, leave)
    return previous


def _restore_handlers(previous: Handlers) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)  # type: ignore[arg-type]


class DetachDetector:
    """Find the detach key sequence in typed input; the keys of a sequence that breaks off are passed on."""

    def __init__(self, keys: bytes = DETACH_KEYS) -> None:
        self._keys = keys
        self._matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Return the bytes to forward and whether the whole sequence was typed (the bytes after it are dropped)."""
        forward = bytearray()
        for byte in data:
            if byte == self._keys[self._matched]:
                self._matched += 1
                if self._matched == len(self._keys):
                    self._matched = 0
                    return bytes(forward), True
                continue
            # The held keys were not a detach after all, so they go to the program, then this byte is judged anew.
            forward.extend(self._keys[: self._matched])
            self._matched = 0
            if byte == self._keys[0]:
                self._matched = 1
            else:
                forward.append(byte)
        return bytes(forward), False


def wake_on_resize() -> tuple[int, int] | None:
    """Return a pipe (read end, write end) that gets a byte on every SIGWINCH; None outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(_number: int, _frame: FrameType | None) -> None:
        try:
            os.write(write_end, b"w")
        except BlockingIOError:
            pass  # A wake-up is already pending.

    signal.signal(signal.SIGWINCH, wake)
    return read_end, write_end
