"""The run process's side of `exec`, `attach` and interactive agents: execs it creates, relays and audits.

Every exec in an agent's container is created here, announced to the monitor
first, so the monitor can tell it from an exec that someone else made. The
run process never attaches to a container after its start. `attach` joins
the terminal of an interactive agent's session, which this process already
holds, so no engine attach happens and none needs to be excused.

Each exec and attach is written to the audit log as the user's action, with
the peer's pid and uid from SO_PEERCRED and, for an exec, the command and exit code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from .control_protocol import (
    ACCEPTED,
    CLOSE_INPUT,
    EXIT,
    INPUT,
    RESIZE,
    STDERR,
    STDOUT,
    ProtocolError,
    Request,
    decode_json,
    encode,
    encode_json,
    parse_size,
)
from .errors import DockerUnavailable
from .exec_hangup import hang_up
from .interactive import SESSION_TERM
from .monitor import Monitor
from .plan import AgentPlan, RunPlan
from .relay import ClientChannel, ExecPipe, InputSide, Peer, first_of, wait_until
from .runtime import Runtime
from .runtime.docker import ContainerGone, RuntimeFailure
from .runtime.execs import STDERR_STREAM, Demultiplexer, Execs
from .workers import Workers

log = logging.getLogger(__name__)

# Output an interactive agent writes before anyone attaches, kept for the first client (a shell's first prompt).
UNCLAIMED_LIMIT = 256 * 1024
# Bounds the terminal transcript of an interactive agent kept in its run folder.
TRANSCRIPT_LIMIT = 64 * 1024 * 1024
# Frames queued for one attached client; a client that falls this far behind is dropped, not waited for.
CLIENT_QUEUE_FRAMES = 1024
# Seconds a client has to hang up after EXIT before its connection is cut. Cutting a receive while the
# client's close arrives makes anyio 4.16 log an InvalidStateError, so the normal end never cuts one.
CLIENT_HANG_UP_WAIT = 5.0
OPEN_POLL_SECONDS = 0.5
# How often a user's exec checks whether its agent is being stopped.
STOPPING_POLL_SECONDS = 0.2

Audit = Callable[..., None]


class SessionRefused(Exception):
    """A request that the run cannot serve: unknown agent, agent not running, or not interactive."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        # The exit code for the client's command: 2 for a name that does not exist, 1 otherwise.
        self.exit_code = exit_code


@dataclass
class InteractiveSession:
    """The terminal of one interactive agent, held by the run process for as long as the agent runs."""

    agent: str
    exec_id: str
    stream: ExecPipe
    clients: dict[int, MemoryObjectSendStream[bytes]] = field(default_factory=dict)
    unclaimed: bytearray | None = field(default_factory=bytearray)
    ended: anyio.Event = field(default_factory=anyio.Event)
    exit_code: int | None = None


class SessionHost:
    def __init__(
        self,
        plan: RunPlan,
        runtime: Runtime,
        workers: Workers,
        monitor: Monitor,
        *,
        audit: Audit,
        containers: dict[str, str],
        terminal_size: tuple[int, int] | None = None,
    ) -> None:
        self.plan = plan
        self.workers = workers
        self.monitor = monitor
        self._audit = audit
        self._containers = containers
        self._agents = {agent.name: agent for agent in plan.agents}
        self._terminal_size = terminal_size
        api = getattr(getattr(runtime, "client", None), "api", None)
        self._execs = Execs(api) if api is not None else None
        self.interactive: dict[str, InteractiveSession] = {}
        # Set when an interactive agent's terminal opens, so an attach that comes first (run --attach) waits.
        self._opened = {agent.name: anyio.Event() for agent in plan.agents if agent.session_command is not None}
        self._background: anyio.abc.TaskGroup | None = None
        self._next_client = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the relays of interactive agents until cancelled."""
        async with anyio.create_task_group() as group:
            self._background = group
            task_status.started()
            await anyio.sleep_forever()

    # -- interactive agents ----------------------------------------------------------------------------------

    async def open_interactive(self, agent: AgentPlan, container_id: str) -> None:
        """Start an interactive agent's program in a terminal exec and relay it in the background."""
        assert agent.session_command is not None
        execs = self._require_execs()
        exec_id = await self._create_exec(agent, container_id, list(agent.session_command), tty=True)
        stream = ExecPipe(await self.workers.call(lambda: execs.start(exec_id, tty=True)))
        session = InteractiveSession(agent=agent.name, exec_id=exec_id, stream=stream)
        self.interactive[agent.name] = session
        self._opened[agent.name].set()
        self._audit("session-start", agent=agent.name, exec_id=exec_id, command=list(agent.session_command))
        log.info("agent %s: its terminal runs in exec %s", agent.name, exec_id[:12])
        if self._terminal_size is not None:
            await self._resize(exec_id, *self._terminal_size)
        if self._background is None:
            raise RuntimeError("the session host is not running; start SessionHost.run first")
        self._background.start_soon(self._pump_interactive, session, agent.log_path.with_suffix(".terminal.log"))

    async def _pump_interactive(self, session: InteractiveSession, transcript_path: Path) -> None:
        try:
            await self._relay_output(session, transcript_path)
        except Exception:  # noqa: BLE001 - a broken relay must never end the run; the agent's program goes on.
            log.exception("agent %s: relaying its terminal failed; attach is no longer possible", session.agent)
        await self._end_session(session)

    async def _relay_output(self, session: InteractiveSession, transcript_path: Path) -> None:
        written = 0
        try:
            transcript: BinaryIO | None = transcript_path.open("wb", buffering=0)
        except OSError as exc:
            log.warning("agent %s: its terminal output is not kept, %s cannot be written: %s", session.agent,
                        transcript_path, exc.strerror)
            transcript = None
        try:
            while data := await session.stream.receive():
                if transcript is not None and written < TRANSCRIPT_LIMIT:
                    transcript.write(data[: TRANSCRIPT_LIMIT - written])
                    written += len(data)
                if session.unclaimed is not None:
                    session.unclaimed.extend(data)
                    del session.unclaimed[:-UNCLAIMED_LIMIT]
                for number, queue in list(session.clients.items()):
                    try:
                        queue.send_nowait(encode(STDOUT, data))
                    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        log.warning("agent %s: dropped an attached client that stopped reading", session.agent)
                        session.clients.pop(number, None)
                        queue.close()
        finally:
            if transcript is not None:
                transcript.close()

    async def _end_session(self, session: InteractiveSession) -> None:
        session.exit_code = await self._exit_code(session.exec_id)
        session.stream.close()
        self._audit("session-end", agent=session.agent, exec_id=session.exec_id, exit_code=session.exit_code)
        for queue in session.clients.values():
            try:
                queue.send_nowait(encode_json(EXIT, {"exit_code": session.exit_code}))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            queue.close()
        session.clients.clear()
        session.ended.set()

    async def attach(self, request: Request, channel: ClientChannel, peer: Peer) -> None:
        """Join a client to an interactive agent's terminal until it detaches or the agent's program ends."""
        opened = self._opened.get(request.agent)
        # An agent that fails before its terminal opens is marked stopping, so the wait ends with it.
        while opened is not None and not opened.is_set() and not self.monitor.is_stopping(request.agent):
            with anyio.move_on_after(OPEN_POLL_SECONDS):
                await opened.wait()
        session = self.interactive.get(request.agent)
        if session is None or session.ended.is_set():
            self._check_agent(request.agent)
            raise SessionRefused(
                f"agent {request.agent} has no terminal to attach to: it is not interactive (set `interactive: "
                f"true` in its manifest entry), or its program has ended; use `orchestrate exec {self.plan.run_id} "
                f"{request.agent} -- CMD` to run a command in it"
            )
        self._audit("user-attach", agent=request.agent, exec_id=session.exec_id, who=peer.to_json())
        log.debug("agent %s: a terminal attached (pid %d, uid %d)", request.agent, peer.pid, peer.uid)
        await channel.send(encode_json(ACCEPTED, {"agent": request.agent, "exec_id": session.exec_id}))
        if request.rows is not None and request.cols is not None:
            await self._resize(session.exec_id, request.rows, request.cols)

        send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=CLIENT_QUEUE_FRAMES)
        number = self._next_client
        self._next_client += 1
        if session.unclaimed:
            send.send_nowait(encode(STDOUT, bytes(session.unclaimed)))
        session.unclaimed = None
        session.clients[number] = send
        input_side = InputSide()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(input_side.run, self._forward_terminal_input(channel, session))
                drained = anyio.Event()
                group.start_soon(self._drain, receive, channel, drained)
                await first_of(input_side.done, drained)
                if not input_side.done.is_set():
                    # The program ended and EXIT went out: the client hangs up by itself once it has read it.
                    await wait_until(input_side.done, CLIENT_HANG_UP_WAIT)
                group.cancel_scope.cancel()
        finally:
            session.clients.pop(number, None)
            send.close()
            self._audit("user-detach", agent=request.agent, exec_id=session.exec_id, who=peer.to_json())
            log.debug("agent %s: a terminal detached (pid %d)", request.agent, peer.pid)
        input_side.raise_error()

    async def _drain(self, receive: Any, channel: ClientChannel, drained: anyio.Event) -> None:
        async with receive:
            async for frame in receive:
                if not await channel.send(frame):
                    break
        drained.set()

    async def _forward_terminal_input(self, channel: ClientChannel, session: InteractiveSession) -> None:
        while (frame := await channel.receive()) is not None:
            kind, payload = frame
            if kind == INPUT:
                await session.stream.send(payload)
            elif kind == RESIZE:
                rows, cols = parse_size(decode_json(kind, payload))
                if rows is not None and cols is not None:
                    await self._resize(session.exec_id, rows, cols)
            elif kind != CLOSE_INPUT:
                # A terminal has no end of input; CLOSE_INPUT is ignored, anything else is a broken client.
                raise ProtocolError(f"unexpected frame {kind!r} while attached")

    # -- exec --------------------------------------------------------------------------------------------------

    async def run_exec(self, request: Request, channel: ClientChannel, peer: Peer) -> None:
        """Run a user's command in an agent's container and relay it to the client until it ends."""
        agent = self._check_agent(request.agent)
        container_id = self._running_container(agent)
        execs = self._require_execs()
        exec_id = await self._create_exec(agent, container_id, list(request.command), tty=request.tty)
        self._audit("user-exec", agent=agent.name, exec_id=exec_id, command=list(request.command), tty=request.tty,
                    who=peer.to_json())
        log.info("agent %s: exec %s started for pid %d (uid %d): %s", agent.name, exec_id[:12], peer.pid, peer.uid,
                 " ".join(request.command)[:200])
        stream = ExecPipe(await self.workers.call(lambda: execs.start(exec_id, tty=request.tty)))
        exit_code: int | None = None
        hung_up = False
        try:
            if request.tty and request.rows is not None and request.cols is not None:
                await self._resize(exec_id, request.rows, request.cols)
            await channel.send(encode_json(ACCEPTED, {"agent": agent.name, "exec_id": exec_id}))
            input_side = InputSide()
            async with anyio.create_task_group() as group:
                group.start_soon(input_side.run, self._forward_exec_input(channel, stream, exec_id))
                group.start_soon(self._close_when_stopping, agent.name, stream)
                await self._pump_exec(stream, channel, tty=request.tty)
                if input_side.done.is_set():
                    hung_up = await self._hang_up(exec_id, container_id)
                exit_code = await self._exit_code(exec_id)
                await channel.send(encode_json(EXIT, {"exit_code": exit_code}))
                await wait_until(input_side.done, CLIENT_HANG_UP_WAIT)
                group.cancel_scope.cancel()
        finally:
            stream.close()
            self._audit("user-exec-end", agent=agent.name, exec_id=exec_id, exit_code=exit_code, hung_up=hung_up)
        input_side.raise_error()

    async def _forward_exec_input(self, channel: ClientChannel, stream: ExecPipe, exec_id: str) -> None:
        try:
            while (frame := await channel.receive()) is not None:
                kind, payload = frame
                if kind == INPUT:
                    await stream.send(payload)
                elif kind == CLOSE_INPUT:
                    stream.close_input()
                elif kind == RESIZE:
                    rows, cols = parse_size(decode_json(kind, payload))
                    if rows is not None and cols is not None:
                        await self._resize(exec_id, rows, cols)
                else:
                    raise ProtocolError(f"unexpected frame {kind!r} during an exec")
        finally:
            # The client has gone or broke the protocol: closing the exec's connection ends its output too.
            stream.close()

    async def _close_when_stopping(self, agent: str, stream: ExecPipe) -> None:
        """Close an exec's connection once its agent is being stopped.

        A client that stops reading blocks the relay, and the relay then leaves the exec's output unread. The
        engine waits for that output before it lets the container stop, which delayed a stop by about 10 s on
        Docker 20.10.
        """
        # Polled, as `attach` does: the monitor marks an agent stopping from several places and has no event for it.
        while not self.monitor.is_stopping(agent):  # noqa: ASYNC110
            await anyio.sleep(STOPPING_POLL_SECONDS)
        stream.close()

    async def _hang_up(self, exec_id: str, container_id: str) -> bool:
        """Send SIGHUP to an exec whose client went away, as a closed terminal would; return whether it was sent.

        The engine closes neither a terminal exec's terminal nor its process when the client goes.
        NOTE: a program that ignores SIGHUP still runs until its agent ends.
        """
        execs = self._require_execs()
        try:
            pid = await self.workers.call(lambda: execs.running_pid(exec_id))
        except (RuntimeFailure, ContainerGone, DockerUnavailable) as exc:
            log.debug("exec %s: sending SIGHUP failed: %s", exec_id[:12], exc)
            return False
        if pid is None:
            return False
        problem = hang_up(pid, container_id)
        if problem is not None:
            log.info("exec %s: its client went away, but no SIGHUP was sent: %s", exec_id[:12], problem)
            return False
        log.info("exec %s: its client went away; sent SIGHUP to process %d", exec_id[:12], pid)
        return True

    async def _pump_exec(self, stream: ExecPipe, channel: ClientChannel, *, tty: bool) -> None:
        demultiplexer = None if tty else Demultiplexer()
        while data := await stream.receive():
            pieces = [(STDOUT, data)] if demultiplexer is None else [
                (STDERR if number == STDERR_STREAM else STDOUT, piece) for number, piece in demultiplexer.feed(data)
            ]
            for kind, piece in pieces:
                if not await channel.send(encode(kind, piece)):
                    return

    # -- shared steps ------------------------------------------------------------------------------------------

    def _check_agent(self, name: str) -> AgentPlan:
        agent = self._agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self._agents))
            raise SessionRefused(f"run {self.plan.run_id} has no agent {name}; its agents are: {known}", exit_code=2)
        return agent

    def _running_container(self, agent: AgentPlan) -> str:
        container_id = self._containers.get(agent.name)
        if container_id is None or self.monitor.is_stopping(agent.name):
            raise SessionRefused(f"agent {agent.name} of run {self.plan.run_id} is not running; check "
                                 f"`orchestrate status {self.plan.run_id}`")
        return container_id

    def _require_execs(self) -> Execs:
        if self._execs is None:
            raise SessionRefused("this run's container runtime cannot run commands inside agents")
        return self._execs

    async def _create_exec(self, agent: AgentPlan, container_id: str, command: list[str], *, tty: bool) -> str:
        execs = self._require_execs()
        environment = {"TERM": SESSION_TERM} if tty else {}
        # Announced first: the engine's exec_create event can reach the monitor before the id returns.
        self.monitor.exec_announced(agent.name)
        exec_id: str | None = None
        try:
            exec_id = await self.workers.call(lambda: execs.create(
                container_id, command, user=agent.container.user, tty=tty, environment=environment,
            ))
        finally:
            self.monitor.exec_created(agent.name, exec_id)
        assert exec_id is not None
        return exec_id

    async def _resize(self, exec_id: str, rows: int, cols: int) -> None:
        execs = self._require_execs()
        try:
            await self.workers.call(lambda: execs.resize(exec_id, rows, cols))
        except Exception as exc:  # noqa: BLE001 - a failed resize leaves the old size; the session goes on.
            log.debug("resizing exec %s failed: %s", exec_id[:12], exc)

    async def _exit_code(self, exec_id: str) -> int | None:
        execs = self._require_execs()
        try:
            return await self.workers.call(lambda: execs.exit_code(exec_id))
        except Exception as exc:  # noqa: BLE001 - the exec may be gone with its container; the code is unknown.
            log.debug("reading the exit code of exec %s failed: %s", exec_id[:12], exc)
            return None
