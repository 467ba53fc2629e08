"""The control socket of a running `orchestrate run`: where `exec` and `attach` reach the run process.

The socket is `runs/<run-id>/control/orchestrate.sock`, in a folder of mode
0700, with mode 0600, owned by the invoking user, and removed when the run
ends. Besides the file modes, each connection's peer uid (SO_PEERCRED) must be
the run's own uid or root, and the peer must share the run process's PID
namespace, which no agent does. A connection that breaks the protocol gets an ERROR
frame and is closed; no client can end the run or its other sessions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, TaskStatus

from .control_protocol import (
    ERROR,
    HELLO,
    ProtocolError,
    bind_address,
    decode_json,
    encode_json,
    parse_request,
    peer_credentials,
    socket_path,
)
from .errors import DockerUnavailable, EnvironmentProblem
from .peer_check import foreign_namespace_reason
from .relay import ClientChannel, Peer
from .runtime.docker import ContainerGone, RuntimeFailure
from .sessions import Audit, SessionHost, SessionRefused

log = logging.getLogger(__name__)

# Seconds a new connection has to send its request.
HELLO_TIMEOUT = 10.0
# Connections served at once. Any more get an error reply and are closed, so a flood of connections cannot use
# up the run process's file descriptors, which its engine calls and the workspace watches need too.
MAX_CONNECTIONS = 64
# Rejected connections recorded one by one; after them, one in every REJECTION_SAMPLE, with the running count.
REJECTIONS_IN_FULL = 20
REJECTION_SAMPLE = 1000
# Seconds a rejected client has to send its request before the rejection goes out.
REJECT_READ_SECONDS = 1.0
# Seconds to wait before accepting again after accept failed, such as with EMFILE when descriptors ran out.
ACCEPT_RETRY_SECONDS = 0.5


class ControlServer:
    def __init__(
        self,
        run_dir: Path,
        sessions: SessionHost,
        *,
        audit: Audit,
        ready: Callable[[Path], None] | None = None,
    ) -> None:
        self.path = socket_path(run_dir)
        self._sessions = sessions
        self._audit = audit
        self._ready = ready
        self._listener: anyio.abc.SocketListener | None = None
        self._connections = 0
        self._rejections = 0

    async def open(self) -> None:
        """Create the socket; raise EnvironmentProblem when that fails.

        Called before the run's task group starts, so the error reaches the user as itself
        rather than inside an exception group.
        """
        try:
            self._listener = await self._listen()
        except FileExistsError as exc:
            raise EnvironmentProblem(
                f"cannot create the run's control socket: {self.path.parent} already exists, and only the run may "
                "create it; remove it and start the run again"
            ) from exc
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot create the run's control socket {self.path} ({exc.strerror or exc}); check that the runs "
                "folder is a local folder that you can write"
            ) from exc

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept connections on the socket from `open` until cancelled, then remove it."""
        if self._listener is None:
            raise RuntimeError("ControlServer.serve called before open")
        try:
            async with self._listener, anyio.create_task_group() as group:
                task_status.started()
                if self._ready is not None:
                    self._ready(self.path)
                await self._accept_loop(self._listener, group)
        finally:
            try:
                self.path.unlink()
                self.path.parent.rmdir()
            except OSError as exc:
                log.debug("removing the control socket %s failed: %s", self.path, exc)

    async def _listen(self) -> anyio.abc.SocketListener:
        # The folder is private before the socket exists, so no other user can reach it between bind and chmod.
        # It must be new: a folder or link that is already there may belong to someone else, or lead elsewhere.
        os.mkdir(self.path.parent, 0o700)
        os.chmod(self.path.parent, 0o700, follow_symlinks=False)
        address, folder = bind_address(self.path)
        try:
            return await anyio.create_unix_listener(address, mode=0o600)
        finally:
            if folder is not None:
                os.close(folder)

    async def _accept_loop(self, listener: anyio.abc.SocketListener, group: anyio.abc.TaskGroup) -> None:
        # anyio's SocketListener.serve ends on the first failed accept, which would end the run with it.
        failures = 0
        while True:
            try:
                stream = await listener.accept()
            except anyio.BrokenResourceError as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning("accepting a control connection on %s failed (%d times in a row): %s; retrying in "
                                "%g s", self.path, failures, exc.__cause__ or exc, ACCEPT_RETRY_SECONDS)
                await anyio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            failures = 0
            group.start_soon(self._handle_counted, stream)

    async def _handle_counted(self, stream: anyio.abc.SocketStream) -> None:
        if self._connections >= MAX_CONNECTIONS:
            async with stream:
                log.warning("rejected a control connection: %d connections are open already", self._connections)
                channel = ClientChannel(stream)
                await _read_request_before_rejecting(channel)
                await channel.send(encode_json(ERROR, {
                    "error": f"the run serves at most {MAX_CONNECTIONS} control connections at once; close some "
                             "`orchestrate exec` or `attach` sessions and try again"}))
            return
        self._connections += 1
        try:
            await self._handle(stream)
        finally:
            self._connections -= 1

    def _record_rejection(self, peer: Peer, reason: str) -> None:
        """Audit and log a rejected peer; past the first REJECTIONS_IN_FULL, only every REJECTION_SAMPLE-th.

        A process that reconnects in a loop would otherwise fill the audit log and the terminal.
        """
        self._rejections += 1
        count = self._rejections
        if count > REJECTIONS_IN_FULL and count % REJECTION_SAMPLE:
            return
        self._audit("control-rejected", who=peer.to_json(), reason=reason, rejections=count)
        log.warning("rejected a control connection from pid %d, uid %d: %s (%d rejections in this run)", peer.pid,
                    peer.uid, reason, count)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            pid, uid, gid = peer_credentials(stream.extra(SocketAttribute.raw_socket))
            peer = Peer(pid=pid, uid=uid, gid=gid)
            channel = ClientChannel(stream)
            if uid not in (os.getuid(), 0):
                self._record_rejection(peer, "the peer's uid is not the run's")
                await _read_request_before_rejecting(channel)
                await channel.send(encode_json(ERROR, {"error": "permission denied: this run belongs to another user"}))
                return
            reason = foreign_namespace_reason(pid, uid)
            if reason is not None:
                self._record_rejection(peer, reason)
                await _read_request_before_rejecting(channel)
                await channel.send(encode_json(ERROR, {"error": f"permission denied: {reason}; run orchestrate exec "
                                                                "and attach on the host, not inside a sandbox"}))
                return
            try:
                await self._serve_request(channel, peer)
            except ProtocolError as exc:
                log.warning("a control client (pid %d) broke the protocol: %s", pid, exc)
                self._audit("control-error", who=peer.to_json(), error=str(exc))
                await channel.send(encode_json(ERROR, {"error": f"invalid request: {exc}"}))
            except SessionRefused as exc:
                await channel.send(encode_json(ERROR, {"error": str(exc), "exit_code": exc.exit_code}))
            except (RuntimeFailure, ContainerGone, DockerUnavailable) as exc:
                log.warning("a control request of pid %d failed: %s", pid, exc)
                await channel.send(encode_json(ERROR, {"error": str(exc)}))
            except Exception as exc:  # noqa: BLE001 - one client's failure must never end the run.
                log.exception("a control request of pid %d failed unexpectedly", pid)
                await channel.send(encode_json(ERROR, {"error": f"internal error in the run process: {exc!r}"}))

    async def _serve_request(self, channel: ClientChannel, peer: Peer) -> None:
        frame = None
        with anyio.move_on_after(HELLO_TIMEOUT) as timer:
            frame = await channel.receive()
        if timer.cancelled_caught:
            raise ProtocolError(f"no request arrived within {HELLO_TIMEOUT:g} s")
        if frame is None:
            return
        kind, payload = frame
        if kind != HELLO:
            raise ProtocolError(f"the first frame must be a request ({HELLO!r}), not {kind!r}")
        request = parse_request(decode_json(kind, payload))
        if request.action == "exec":
            await self._sessions.run_exec(request, channel, peer)
        else:
            await self._sessions.attach(request, channel, peer)


async def _read_request_before_rejecting(channel: ClientChannel) -> None:
    """Wait up to REJECT_READ_SECONDS for the client's request, whose content does not matter.

    A reply sent before the request arrived breaks the client's send with EPIPE, and closing a Unix socket
    with unread input resets it, so either way the client would not read the reason.
    """
    with anyio.move_on_after(REJECT_READ_SECONDS):
        try:
            await channel.receive()
        except ProtocolError:
            pass
