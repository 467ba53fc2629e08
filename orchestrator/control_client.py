"""The client side of the control socket: `orchestrate exec`, `orchestrate attach` and a run's own terminal.

Everything here blocks; it runs in the command's main thread, or in a thread of
the run process for `run --attach` and `shell`.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .control_protocol import (
    ACCEPTED,
    CLOSE_INPUT,
    ERROR,
    EXIT,
    HELLO,
    INPUT,
    RESIZE,
    STDERR,
    STDOUT,
    FrameBuffer,
    Request,
    bind_address,
    decode_json,
    encode,
    encode_json,
    socket_path,
)
from .errors import EnvironmentProblem, InputError, OrchestrateError
from .plan import RUN_ID_PATTERN
from .terminal import DetachDetector, window_size
from .terminal_filter import TerminalFilter

# How often the relay checks the window size when no SIGWINCH wakes it (in a thread, which gets no signals).
SIZE_POLL_SECONDS = 0.25
CONNECT_TIMEOUT = 10.0


class SessionError(OrchestrateError):
    """The run process rejected the request or ended it with an error."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _session_error(payload: bytes) -> SessionError:
    document = decode_json(ERROR, payload)
    code = document.get("exit_code")
    return SessionError(str(document.get("error")), exit_code=code if code in (1, 2) else 1)


@dataclass(frozen=True)
class RelayEnd:
    """The end of a relay: the program's exit code, a detach, or the end of the run (neither set)."""

    exit_code: int | None = None
    detached: bool = False


def run_socket(runs_dir: Path, run_id: str) -> Path:
    """Return the control socket of an active run; raise with the fix when the run is unknown or not active."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from `orchestrate status --runs-dir {runs_dir}`")
    run_dir = runs_dir / run_id
    if not run_dir.is_dir():
        raise InputError(f"run {run_id} is unknown: {run_dir} does not exist; list the runs with "
                         f"`orchestrate status --runs-dir {runs_dir}`, or pass --runs-dir with the folder of the run")
    path = socket_path(run_dir)
    if not path.exists():
        raise EnvironmentProblem(f"run {run_id} is not active: {path} does not exist; only a running `orchestrate run` "
                                 "or `orchestrate shell` accepts exec and attach (check `orchestrate status`)")
    problem = socket_owner_problem(path)
    if problem is not None:
        raise EnvironmentProblem(f"rejected the control socket {path}: {problem}; a run's control folder is a private "
                                 "folder of the user who started it, so this one was not made by orchestrate")
    return path


def socket_owner_problem(path: Path) -> str | None:
    """Return why the socket at `path` may be another user's stand-in for a run's, or None when it looks right.

    The owner of the folder can replace the socket and read what `exec` and `attach` send, typed input included.
    """
    folder = path.parent.lstat()
    socket_stat = path.lstat()
    if stat.S_ISLNK(folder.st_mode) or not stat.S_ISDIR(folder.st_mode):
        return f"{path.parent} is not a folder"
    if not stat.S_ISSOCK(socket_stat.st_mode):
        return "it is not a socket"
    if folder.st_mode & 0o077:
        return f"{path.parent} has mode {stat.S_IMODE(folder.st_mode):o}, not 700"
    if socket_stat.st_uid != folder.st_uid:
        return f"it belongs to uid {socket_stat.st_uid}, its folder to uid {folder.st_uid}"
    if folder.st_uid not in (os.getuid(), 0) and os.getuid() != 0:
        return f"it belongs to uid {folder.st_uid}, not to you (uid {os.getuid()}) or root"
    return None


def connect(path: Path) -> socket.socket:
    address, folder = bind_address(path)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    connection.settimeout(CONNECT_TIMEOUT)
    try:
        connection.connect(address)
    except PermissionError as exc:
        connection.close()
        raise EnvironmentProblem(f"permission denied on {path}: the run belongs to another user; run this command "
                                 "as the user who started the run") from exc
    except OSError as exc:
        connection.close()
        raise EnvironmentProblem(f"cannot connect to the run's control socket {path} ({exc.strerror}); the run may "
                                 "have just ended: check `orchestrate status`") from exc
    finally:
        if folder is not None:
            os.close(folder)
    connection.settimeout(None)
    return connection


@dataclass
class Opened:
    """An accepted session: the acceptance, and the frames and bytes that arrived right behind it."""

    accepted: dict[str, object]
    buffer: FrameBuffer
    pending: list[tuple[bytes, bytes]]


def open_session(connection: socket.socket, request: Request) -> Opened:
    """Send the request and return the run process's acceptance; raise SessionError with its reason otherwise."""
    try:
        connection.sendall(encode_json(HELLO, request.to_json()))
    except (BrokenPipeError, ConnectionResetError):
        pass  # A run that rejects the peer replies at once and closes, and its reply is still there to read.
    buffer = FrameBuffer()
    while True:
        try:
            data = connection.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise SessionError("the run process closed the connection before its reply; the run may have ended")
        frames = buffer.feed(data)
        for index, (kind, payload) in enumerate(frames):
            if kind == ERROR:
                raise _session_error(payload)
            if kind == ACCEPTED:
                return Opened(decode_json(kind, payload), buffer, frames[index + 1:])


class Relay:
    """Copy input to the session and its output to the terminal until the program ends or the user detaches."""

    def __init__(
        self,
        connection: socket.socket,
        *,
        input_fd: int | None,
        output: BinaryIO,
        errors: BinaryIO,
        terminal_fd: int | None = None,
        detach: bool = False,
        resize_fd: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._connection = connection
        self._input_fd = input_fd
        self._output = output
        self._errors = errors
        self._terminal_fd = terminal_fd
        self._detector = DetachDetector() if detach else None
        self._resize_fd = resize_fd
        self._stop = stop or threading.Event()
        self._size = None if terminal_fd is None else window_size(terminal_fd)
        # Only a terminal gets filtered output: a pipe or file gets the program's exact bytes.
        self._output_filter = TerminalFilter() if output.isatty() else None
        self._errors_filter = TerminalFilter() if errors.isatty() else None

    def run(self, opened: Opened) -> RelayEnd:
        """Relay until the program ends, the user detaches or the run ends; then turn off the modes it left on."""
        try:
            return self._relay(opened)
        finally:
            self._reset_terminal()

    def _reset_terminal(self) -> None:
        # One reset is enough when standard output and standard error are the same terminal.
        for stream, terminal_filter in ((self._output, self._output_filter), (self._errors, self._errors_filter)):
            if terminal_filter is not None:
                try:
                    stream.write(terminal_filter.reset_sequence())
                    stream.flush()
                except OSError:
                    pass  # The terminal has gone, and its modes with it.
                return

    def _relay(self, opened: Opened) -> RelayEnd:
        buffer = opened.buffer
        end = self._handle_frames(opened.pending)
        if end is not None:
            return end
        # poll, not epoll: epoll rejects a regular file or /dev/null as standard input.
        with selectors.PollSelector() as selector:
            selector.register(self._connection, selectors.EVENT_READ, "socket")
            if self._input_fd is not None:
                selector.register(self._input_fd, selectors.EVENT_READ, "input")
            if self._resize_fd is not None:
                selector.register(self._resize_fd, selectors.EVENT_READ, "resize")
            while not self._stop.is_set():
                for key, _events in selector.select(SIZE_POLL_SECONDS):
                    if key.data == "socket":
                        end = self._from_session(buffer)
                        if end is not None:
                            return end
                    elif key.data == "input":
                        if self._from_input(selector):
                            return RelayEnd(detached=True)
                    else:
                        _drain(self._resize_fd)
                self._follow_size()
        return RelayEnd()

    def _from_session(self, buffer: FrameBuffer) -> RelayEnd | None:
        data = self._connection.recv(65536)
        if not data:
            return RelayEnd()
        return self._handle_frames(buffer.feed(data))

    def _handle_frames(self, frames: list[tuple[bytes, bytes]]) -> RelayEnd | None:
        for kind, payload in frames:
            if kind == STDOUT:
                self._output.write(payload if self._output_filter is None else self._output_filter.feed(payload))
                self._output.flush()
            elif kind == STDERR:
                self._errors.write(payload if self._errors_filter is None else self._errors_filter.feed(payload))
                self._errors.flush()
            elif kind == EXIT:
                code = decode_json(kind, payload).get("exit_code")
                return RelayEnd(exit_code=code if isinstance(code, int) else None)
            elif kind == ERROR:
                raise _session_error(payload)
        return None

    def _from_input(self, selector: selectors.BaseSelector) -> bool:
        assert self._input_fd is not None
        data = os.read(self._input_fd, 65536)
        if not data:
            selector.unregister(self._input_fd)
            self._connection.sendall(encode(CLOSE_INPUT))
            return False
        detached = False
        if self._detector is not None:
            data, detached = self._detector.feed(data)
        if data:
            self._connection.sendall(encode(INPUT, data))
        return detached

    def _follow_size(self) -> None:
        if self._terminal_fd is None:
            return
        size = window_size(self._terminal_fd)
        if size is not None and size != self._size:
            self._size = size
            self._connection.sendall(encode_json(RESIZE, {"rows": size[0], "cols": size[1]}))


def _drain(fd: int | None) -> None:
    if fd is None:
        return
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
