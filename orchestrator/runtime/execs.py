"""Commands run inside a running container (the engine's exec), for `orchestrate exec`, `attach` and `shell`.

Only the run process creates execs, because the monitor reports every exec that
it did not register as tampering. An exec runs as the container's user with the
container's capabilities, seccomp profile, no-new-privileges and limits: the
engine applies the container's settings, and nothing here adds to them.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import docker

from .docker import _translated as translated_errors

# How long an ended exec may take before the engine reports its exit code.
EXIT_CODE_WAIT = 5.0
STDOUT_STREAM = 1
STDERR_STREAM = 2
_MULTIPLEX_HEADER = struct.Struct(">BxxxI")


class ExecStream:
    """The hijacked connection of a started exec: its terminal, or its multiplexed stdin, stdout and stderr."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        raw = getattr(handle, "_sock", handle)
        if not isinstance(raw, socket.socket):
            raise TypeError(f"the engine returned {type(raw).__name__} for an exec, not a socket")
        # Blocking mode without a timeout: callers on an event loop pass MSG_DONTWAIT to each call instead.
        raw.settimeout(None)
        self._socket = raw

    @property
    def socket(self) -> socket.socket:
        return self._socket

    def close_input(self) -> None:
        """Give the exec end of input, as a closed pipe would."""
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        close = getattr(self._handle, "close", None)
        if close is not None:
            close()


class Demultiplexer:
    """Split the engine's stream of a non-terminal exec into (stream number, bytes) pieces."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._data.extend(data)
        pieces = []
        while len(self._data) >= _MULTIPLEX_HEADER.size:
            stream, length = _MULTIPLEX_HEADER.unpack(bytes(self._data[: _MULTIPLEX_HEADER.size]))
            end = _MULTIPLEX_HEADER.size + length
            if len(self._data) < end:
                break
            pieces.append((stream, bytes(self._data[_MULTIPLEX_HEADER.size:end])))
            del self._data[:end]
        return pieces


class Execs:
    """Exec calls on one engine. Every method blocks, so callers run them in worker threads."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api

    def create(
        self, container_id: str, command: list[str], *, user: str, tty: bool, environment: dict[str, str]
    ) -> str:
        """Create an exec with its input attached and return its id; nothing runs until `start`."""
        with translated_errors(f"create an exec in container {container_id[:12]}"):
            response = self._api.exec_create(
                container_id, command, stdout=True, stderr=True, stdin=True, tty=tty, privileged=False,
                user=user, environment=environment,
            )
        return str(response["Id"])

    def start(self, exec_id: str, *, tty: bool) -> ExecStream:
        with translated_errors(f"start exec {exec_id[:12]}"):
            handle = self._api.exec_start(exec_id, tty=tty, socket=True)
        return ExecStream(handle)

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        with translated_errors(f"resize exec {exec_id[:12]}"):
            self._api.exec_resize(exec_id, height=rows, width=cols)

    def running_pid(self, exec_id: str) -> int | None:
        """Return the host pid of an exec's process while it runs, else None."""
        with translated_errors(f"inspect exec {exec_id[:12]}"):
            details = self._api.exec_inspect(exec_id)
        pid = int(details.get("Pid") or 0)
        return pid if details.get("Running") and pid > 0 else None

    def exit_code(self, exec_id: str) -> int | None:
        """Return the exit code of an ended exec, or None when the engine has none within EXIT_CODE_WAIT."""
        deadline = time.monotonic() + EXIT_CODE_WAIT
        while True:
            with translated_errors(f"inspect exec {exec_id[:12]}"):
                details = self._api.exec_inspect(exec_id)
            if not details.get("Running") and details.get("ExitCode") is not None:
                return int(details["ExitCode"])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
