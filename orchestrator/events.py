"""The Docker event feed of the safety monitor, and the rule for which engine events are tampering.

The SDK's event generator ends with a plain StopIteration when the connection
to the engine drops, because docker-py 7.2's CancellableStream turns the socket
error into the end of the stream. A monitor that loops over it goes blind
without an error. So this feed treats every end of the stream, clean or not, as
a gap. It reconnects with `since=` a little before the last event it received
and yields a `FeedGap`, so that the caller re-inspects every container. When
`attempts` connection attempts in a row fail, it raises `FeedLost`, so that the
caller can fail closed.

The engine replays only the last 256 events it keeps (eventsLimit in moby's
daemon/events), so events can be lost across a gap even after a reconnect.
The caller's re-inspection covers that.

The blocking read runs in one daemon thread per feed, outside anyio's worker
pool, so it holds no limiter token. That thread never waits for the consumer,
because the engine skips any event that a subscriber does not take within
100 ms. It hands each event to an unbounded memory object stream instead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import docker
from anyio.streams.memory import MemoryObjectSendStream

from .errors import DockerUnavailable

log = logging.getLogger(__name__)

EVENT_TYPES = ["container", "network"]
READER_THREAD_NAME = "orchestrate-docker-events"
# The engine stamps an event before it takes the lock that orders its buffer, so two events can
# be buffered out of time order. Resuming this far before the last event catches such a late one.
# Replayed events that were already delivered are recognised by their key and skipped.
RESUME_OVERLAP_NS = 1_000_000_000
# How long the end of iteration waits for the reader thread, which normally returns within
# milliseconds once its socket is shut down.
THREAD_EXIT_TIMEOUT = 5.0
DETAIL_MAX_CHARS = 300

TAMPERING = "tampering"
OOM = "oom"
# Actions that the orchestrator never causes, so each one comes from someone else.
ALWAYS_TAMPERING = frozenset(
    {"exec_create", "exec_start", "pause", "unpause", "update", "rename", "restart", "extract-to-dir"}
)
# Actions that the orchestrator itself causes while it stops a container.
STOP_ACTIONS = frozenset({"kill", "stop", "destroy"})


@dataclass(frozen=True)
class EngineEvent:
    """One engine event about one container, with the action's free text split off."""

    kind: str
    # The action without the text after ':', so "exec_create: true ls" is "exec_create".
    action: str
    container_id: str
    time_nano: int
    attributes: dict[str, str]
    # The text after ':' in the engine's action: an exec's command line or a health status.
    argument: str = field(default="")

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "action": self.action,
            "argument": self.argument,
            "container_id": self.container_id,
            "time_nano": self.time_nano,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class FeedGap:
    """The event stream ended and was reopened, so events may be missing: re-inspect every container."""

    reason: str
    # Unix time in seconds that the reopened stream replays from.
    since: float


class FeedLost(DockerUnavailable):
    """The event stream could not be reopened, so the monitor can no longer detect tampering."""


Item = EngineEvent | FeedGap | FeedLost


class _Stream(Protocol):
    """The part of docker's CancellableStream that the feed uses."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def parse_event(raw: Mapping[str, Any]) -> EngineEvent | None:
    """Return the event about one container in an engine message, or None for any other message."""
    kind = raw.get("Type")
    actor = raw.get("Actor") or {}
    attributes = {str(key): str(value) for key, value in (actor.get("Attributes") or {}).items()}
    if kind == "container":
        container_id = actor.get("ID") or raw.get("id")
    elif kind == "network":
        # A network event's actor is the network, and the container is one of its attributes.
        container_id = attributes.get("container")
    else:
        return None
    if not container_id:
        return None

    action, _, argument = str(raw.get("Action") or raw.get("status") or "").partition(":")
    return EngineEvent(
        kind=kind,
        action=action.strip(),
        container_id=str(container_id),
        time_nano=_time_nano(raw),
        attributes=attributes,
        argument=argument.strip(),
    )


def _time_nano(raw: Mapping[str, Any]) -> int:
    if raw.get("timeNano"):
        return int(raw["timeNano"])
    return int(raw.get("time") or 0) * 1_000_000_000


EventKey = tuple[str, str, str, int]


def _event_key(raw: Mapping[str, Any]) -> EventKey:
    actor = raw.get("Actor") or {}
    return (str(raw.get("Type")), str(raw.get("Action")), str(actor.get("ID")), _time_nano(raw))


class EventFeed:
    """Engine events of the watched containers, with every break in the stream reported as a `FeedGap`.

    Iterate it once with `async for`. Iteration ends when `close()` is called
    and raises `FeedLost` when the engine cannot be reached `attempts` times in
    a row. The reader thread is gone when the `async for` loop has ended.
    """

    def __init__(
        self,
        connect: Callable[[], docker.APIClient],
        *,
        watched: Callable[[str], bool],
        since: float | None = None,
        attempts: int = 5,
        retry_delay: float = 0.5,
    ) -> None:
        """Prepare a feed. Nothing connects until iteration starts.

        `connect` returns a new client for each connection, and the feed closes it.
        `watched` is called on the event loop's thread with a container id.
        `since` is a Unix time in seconds to replay from; by default the feed starts
        at its first connection attempt.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        if retry_delay < 0:
            raise ValueError(f"retry_delay must be 0 or more seconds, not {retry_delay}")
        self._connect = connect
        self._watched = watched
        self._resume_nano: int | None = None if since is None else round(since * 1_000_000_000)
        self._attempts = attempts
        self._retry_delay = retry_delay

        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread: int | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._send: MemoryObjectSendStream[Item] | None = None
        self._thread_finished: anyio.Event | None = None
        # Keys of the events received within RESUME_OVERLAP_NS of the newest one, in arrival order, so
        # the events that the engine replays after a reconnect are skipped.
        self._recent: set[EventKey] = set()
        self._recent_order: deque[EventKey] = deque()
        self._newest_nano = 0

    async def __aiter__(self) -> AsyncIterator[EngineEvent | FeedGap]:
        if self._thread is not None:
            raise RuntimeError("an EventFeed can be iterated only once; create a new feed")
        send, receive = anyio.create_memory_object_stream[Item](max_buffer_size=math.inf)
        self._send = send
        self._thread_finished = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._read, name=READER_THREAD_NAME, daemon=True)
        self._thread.start()

        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, FeedLost):
                        raise item
                    if isinstance(item, FeedGap) or self._watched(item.container_id):
                        yield item
        finally:
            self.close()
            await self._wait_for_thread()

    def close(self) -> None:
        """End the feed from any thread: shut the HTTP stream down so the reader thread returns."""
        self._closed.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            _close_quietly(stream)
        self._end_iteration()

    def _end_iteration(self) -> None:
        # A memory object stream belongs to its event loop, so another thread goes through the loop.
        send = self._send
        if send is None:
            return
        if threading.get_ident() == self._loop_thread:
            send.close()
            return
        try:
            anyio.from_thread.run_sync(send.close, token=self._token)
        except RuntimeError:
            pass  # The event loop has finished, and its iteration with it.

    async def _wait_for_thread(self) -> None:
        thread, finished = self._thread, self._thread_finished
        if thread is None or finished is None:
            return
        with anyio.move_on_after(THREAD_EXIT_TIMEOUT, shield=True):
            await finished.wait()
        if finished.is_set():
            # The thread needs the event loop no more, so joining it blocks the loop for microseconds.
            thread.join(THREAD_EXIT_TIMEOUT)
        if thread.is_alive():
            # NOTE: an engine that accepts the connection but never responds to the events request
            # keeps the thread in that request, which has no timeout. It is a daemon thread.
            log.warning("the Docker event reader thread did not end within %s s of closing", THREAD_EXIT_TIMEOUT)

    # The rest runs in the reader thread.

    def _read(self) -> None:
        try:
            self._read_until_closed()
        except Exception as exc:
            # An unexpected error must not leave the monitor blind without a word.
            log.exception("the Docker event reader failed")
            self._deliver(FeedLost(
                f"the Docker event reader failed ({exc!r}); the monitor can no longer see tampering, so stop "
                "the run's agents and report this bug"
            ))
        finally:
            self._signal_finished()

    def _signal_finished(self) -> None:
        def finish() -> None:
            # Buffered items stay readable after this, so a FeedLost still reaches the consumer.
            if self._send is not None:
                self._send.close()
            if self._thread_finished is not None:
                self._thread_finished.set()

        try:
            anyio.from_thread.run_sync(finish, token=self._token)
        except RuntimeError:
            pass  # The event loop has finished, so no task waits for this thread.

    def _read_until_closed(self) -> None:
        failures = 0
        gap_reason: str | None = None
        last_error = ""
        if self._resume_nano is None:
            self._resume_nano = time.time_ns()

        while not self._closed.is_set():
            if failures >= self._attempts:
                self._deliver(self._lost(last_error))
                return
            if failures and self._closed.wait(self._retry_delay):
                return

            resume_nano = self._resume_nano
            try:
                client, stream = self._open(resume_nano)
            except _Closed:
                return
            except Exception as exc:
                failures += 1
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("connecting to the Docker event stream failed (attempt %d of %d): %s",
                            failures, self._attempts, last_error)
                continue

            try:
                if gap_reason is not None:
                    log.warning("the Docker event stream reopened, replaying from %.3f: %s", resume_nano / 1e9,
                                gap_reason)
                    self._deliver(FeedGap(reason=gap_reason, since=resume_nano / 1e9))
                received, gap_reason = self._pump(stream)
            finally:
                self._forget_stream(stream)
                _close_quietly(client)

            failures = 0 if received else failures + 1
            last_error = gap_reason
            if not self._closed.is_set():
                log.warning("the Docker event stream ended: %s", gap_reason)

    def _open(self, resume_nano: int) -> tuple[docker.APIClient, _Stream]:
        client = self._connect()
        try:
            # The engine parses "seconds.nanoseconds", and the SDK passes a string through, but its
            # stub types `since` as int, which would lose the nanoseconds.
            since = f"{resume_nano // 1_000_000_000}.{resume_nano % 1_000_000_000:09d}"
            stream: _Stream = client.events(
                since=cast(int, since), filters={"type": EVENT_TYPES}, decode=True
            )
        except BaseException:
            _close_quietly(client)
            raise

        with self._lock:
            if not self._closed.is_set():
                self._stream = stream
                return client, stream
        _close_quietly(stream)
        _close_quietly(client)
        raise _Closed()

    def _pump(self, stream: _Stream) -> tuple[bool, str]:
        """Deliver events until the stream ends; return whether any arrived, and why it ended."""
        received = False
        try:
            for raw in stream:
                if self._closed.is_set():
                    break
                if not isinstance(raw, dict):
                    log.warning("skipped an engine event that is not a JSON object: %.200r", raw)
                    continue
                received = True
                self._receive(raw)
        except Exception as exc:
            # docker-py raises few errors here, and any error, expected or not, is the same gap.
            return received, f"reading the event stream failed ({type(exc).__name__}: {exc})"
        return received, "the engine closed the event stream"

    def _receive(self, raw: dict[str, Any]) -> None:
        key = _event_key(raw)
        if key in self._recent:
            return
        self._remember(key)

        event = parse_event(raw)
        if event is not None:
            self._deliver(event)

    def _remember(self, key: EventKey) -> None:
        self._recent.add(key)
        self._recent_order.append(key)
        time_nano = key[3]
        if time_nano <= self._newest_nano:
            return

        self._newest_nano = time_nano
        horizon = time_nano - RESUME_OVERLAP_NS
        self._resume_nano = max(horizon, self._resume_nano or 0)
        while self._recent_order and self._recent_order[0][3] < horizon:
            self._recent.discard(self._recent_order.popleft())

    def _forget_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._stream = None
        _close_quietly(stream)

    def _lost(self, last_error: str) -> FeedLost:
        return FeedLost(
            f"lost the Docker event stream: {self._attempts} connection attempts in a row failed, the last with "
            f"{last_error}; the monitor can no longer see tampering, so stop the run's agents and check "
            "`docker info`"
        )

    def _deliver(self, item: Item) -> None:
        send = self._send
        if send is None or self._closed.is_set():
            return
        try:
            anyio.from_thread.run_sync(send.send_nowait, item, token=self._token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
            # The consumer has stopped iterating, or its event loop has finished.
            self._closed.set()


class _Closed(Exception):
    """The feed was closed while a connection was being opened."""


class _Closable(Protocol):
    def close(self) -> None: ...


def _close_quietly(resource: _Closable) -> None:
    # Closing only releases a socket that may already be broken, so a failure here changes nothing.
    try:
        resource.close()
    except Exception as exc:
        log.debug("closing %r failed: %r", resource, exc)


def classify(event: EngineEvent, *, started: bool, stopping: bool, exited: bool = False) -> tuple[str, str] | None:
    """Return ("tampering", detail) or ("oom", detail) for an event the orchestrator did not cause, else None.

    `started`: the feed has delivered this container's `start` event. Take it from
    the feed, not from the start call's return, because the orchestrator's own
    attach and the engine's connect to network "none" come before the start.
    `stopping`: the orchestrator is stopping the container, so kill, stop and
    destroy are its own. `exited`: the feed has delivered the container's `die`
    event, after which the engine disconnects the container's networks itself.
    """
    action = event.action
    if action == "oom":
        return OOM, _detail(event, "the container ran out of memory and the kernel killed a process in it")

    if event.kind == "network":
        connecting = action == "connect"
        disconnecting = action == "disconnect" and not (stopping or exited)
        if started and (connecting or disconnecting):
            return TAMPERING, _detail(event, f"network {action}")
        return None

    if action in ALWAYS_TAMPERING:
        return TAMPERING, _detail(event, action)
    if action == "attach" and started:
        return TAMPERING, _detail(event, action)
    if action in STOP_ACTIONS and not stopping:
        return TAMPERING, _detail(event, action)
    # NOTE: a second `start` of an exited agent by someone else is not flagged, because the
    # `started` flag cannot tell it from the orchestrator's own start.
    return None


def _detail(event: EngineEvent, summary: str) -> str:
    attributes = {key: _printable(value) for key, value in event.attributes.items()}
    argument = _printable(event.argument)
    parts = [summary]
    if argument:
        parts.append(f"command '{argument}'" if event.action.startswith("exec_") else argument)
    if "signal" in attributes:
        parts.append(f"signal {attributes['signal']}")
    if "execID" in attributes:
        parts.append(f"exec {attributes['execID'][:12]}")
    if event.kind == "network" and "name" in attributes:
        parts.append(f"network '{attributes['name']}'")
    if "oldName" in attributes:
        parts.append(f"renamed from '{attributes['oldName']}' to '{attributes.get('name', '')}'")
    text = ", ".join(parts) + f" (container {_printable(event.container_id[:12])})"
    if len(text) > DETAIL_MAX_CHARS:
        return text[: DETAIL_MAX_CHARS - 3] + "..."
    return text


def _printable(text: str) -> str:
    """Drop control and format characters, which could rewrite a terminal line or a log line."""
    return "".join(char for char in text if not unicodedata.category(char).startswith("C"))
