"""The byte relay of a control session: the client's connection, the exec's connection, and their ends.

Both sides are read and written on the event loop. Each session's input loop
runs as a task whose end and protocol error the session reads afterwards.
"""

from __future__ import annotations

import logging
import pwd
import socket
from collections.abc import Awaitable
from dataclasses import dataclass

import anyio
import anyio.abc

from .control_protocol import FrameBuffer, ProtocolError
from .runtime.execs import ExecStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a control connection, from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int

    def to_json(self) -> dict[str, object]:
        try:
            user: str | None = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = None
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "user": user}


class ClientChannel:
    """One control connection, read and written as frames."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._buffer = FrameBuffer()
        self._ready: list[tuple[bytes, bytes]] = []
        self._lock = anyio.Lock()

    async def receive(self) -> tuple[bytes, bytes] | None:
        """Return the next frame, or None once the client has gone; raise ProtocolError on a bad frame."""
        while not self._ready:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            self._ready.extend(self._buffer.feed(data))
        return self._ready.pop(0)

    async def send(self, frame: bytes) -> bool:
        """Send one encoded frame; return False when the client has gone."""
        async with self._lock:
            try:
                await self._stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return False
        return True


class ExecPipe:
    """An exec's connection, read and written on the event loop with no worker thread.

    A worker thread blocked in recv cannot be cancelled, so a relay built on one
    would leave threads behind whenever a session ends first on the client's side.
    """

    def __init__(self, stream: ExecStream) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._send_lock = anyio.Lock()
        self._closed = False

    async def receive(self) -> bytes:
        """Return the next bytes from the exec, or b"" once it has ended or the pipe is closed."""
        while not self._closed:
            try:
                return self._socket.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            try:
                await anyio.wait_readable(self._socket)
            except (anyio.ClosedResourceError, OSError):
                return b""
        return b""

    async def send(self, data: bytes) -> None:
        """Send all of `data`, unless the exec has ended; attached clients take turns."""
        async with self._send_lock:
            view = memoryview(data)
            while view and not self._closed:
                try:
                    sent = self._socket.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    await anyio.wait_writable(self._socket)
                    continue
                except OSError as exc:
                    log.debug("input for an exec was dropped: %s", exc)
                    return
                view = view[sent:]

    def close_input(self) -> None:
        self._stream.close_input()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        anyio.notify_closing(self._socket)
        self._stream.close()


class InputSide:
    """A client's input loop run as a task: its end is an event, and its protocol error is kept for the caller.

    A task group would wrap the error in an ExceptionGroup, which the control server
    could not tell from an internal error.
    """

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: ProtocolError | None = None

    async def run(self, loop: Awaitable[None]) -> None:
        try:
            await loop
        except ProtocolError as exc:
            self.error = exc
        finally:
            self.done.set()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


async def wait_until(event: anyio.Event, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await event.wait()


async def first_of(*events: anyio.Event) -> None:
    """Return as soon as one of `events` is set."""
    async with anyio.create_task_group() as group:
        for event in events:
            group.start_soon(_set_then_cancel, event, group.cancel_scope)


async def _set_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
