"""The Docker event feed on a real engine: tampering from the CLI, and a dropped engine connection.

A dropped connection is made by the test's own Unix socket proxy in front of
/var/run/docker.sock. The proxy cuts only the connections that carry an
`/events` request, which is what a daemon restart does to a monitor's stream.
"""

from __future__ import annotations

import re
import secrets
import selectors
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anyio
import docker
import docker.errors
import pytest

from orchestrator.events import READER_THREAD_NAME, EngineEvent, EventFeed, FeedGap, FeedLost, classify

from .conftest import BASE_IMAGE, TEST_LABEL

DOCKER_SOCKET = "/var/run/docker.sock"
EVENTS_REQUEST = re.compile(rb"^GET \S*/events[?\s]", re.MULTILINE)
TAMPERING_ACTIONS = {"pause", "unpause", "exec_create", "exec_start"}
Item = EngineEvent | FeedGap


@dataclass
class WatchedContainer:
    id: str
    # Unix time just before the container was created, so the feed replays its whole life.
    since: float


@pytest.fixture
def watched_container(docker_client: docker.DockerClient) -> Iterator[WatchedContainer]:
    since = time.time()
    container = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "60"], detach=True, network_mode="none",
        labels={TEST_LABEL: f"event-feed-{secrets.token_hex(4)}"},
    )
    try:
        yield WatchedContainer(id=container.id, since=since)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    carries_events: bool = False


class EventsProxy:
    """A Unix socket proxy to the Docker socket that can cut the connections of `/events` requests."""

    def __init__(self, path: Path, upstream: str = DOCKER_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self._connections: dict[socket.socket, _Connection] = {}
        self._commands: list[tuple[str, list[int]]] = []
        self._done = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="test-events-proxy", daemon=True)
        self._thread.start()

    def sever_events(self) -> int:
        """Cut every connection that carries an events request, and return the number cut."""
        return self._command("sever")

    def stop(self) -> None:
        """Close every connection and the listening socket, so new connections are refused."""
        if self._thread.is_alive():
            self._command("stop")
            self._thread.join(5)
        self.path.unlink(missing_ok=True)

    def _command(self, name: str) -> int:
        result: list[int] = []
        with self._done:
            self._commands.append((name, result))
            self._wake_writer.send(b"x")
            assert self._done.wait_for(lambda: bool(result), timeout=5), f"the proxy did not {name} in time"
        return result[0]

    def _serve(self) -> None:
        running = True
        while running:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_reader:
                    sock.recv(64)
                    running = self._run_commands()
                else:
                    self._forward(sock)
        self._selector.close()
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        connection = _Connection(client=client, upstream=upstream)
        for end in (client, upstream):
            self._connections[end] = connection
            self._selector.register(end, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        connection = self._connections.get(sock)
        if connection is None:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._cut(connection)
            return
        if sock is connection.client and EVENTS_REQUEST.search(data):
            connection.carries_events = True
        peer = connection.upstream if sock is connection.client else connection.client
        try:
            peer.sendall(data)
        except OSError:
            self._cut(connection)

    def _run_commands(self) -> bool:
        running = True
        with self._done:
            for name, result in self._commands:
                # Both ends of a connection map to the same entry.
                chosen = list({id(item): item for item in self._connections.values()}.values())
                if name == "sever":
                    chosen = [item for item in chosen if item.carries_events]
                else:
                    running = False
                for connection in chosen:
                    self._cut(connection)
                result.append(len(chosen))
            self._commands.clear()
            self._done.notify_all()
        return running

    def _cut(self, connection: _Connection) -> None:
        for end in (connection.client, connection.upstream):
            if self._connections.pop(end, None) is None:
                continue
            self._selector.unregister(end)
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # The other side closed it first.
            end.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[EventsProxy]:
    events_proxy = EventsProxy(tmp_path / "docker.sock")
    try:
        yield events_proxy
    finally:
        events_proxy.stop()


def _connect_to(url: str) -> Callable[[], docker.APIClient]:
    return lambda: docker.APIClient(base_url=url, version="auto", timeout=10)


async def _read_until(
    events: AsyncIterator[Item], seen: list[Item], done: Callable[[Item], bool], what: str, seconds: float = 15
) -> Item:
    """Read items into `seen` until one satisfies `done`, and return that item."""
    with anyio.fail_after(seconds):
        async for item in events:
            seen.append(item)
            if done(item):
                return item
    raise AssertionError(f"the feed ended before {what}; it delivered {seen}")


def _is_action(action: str) -> Callable[[Item], bool]:
    return lambda item: isinstance(item, EngineEvent) and item.action == action


def _reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == READER_THREAD_NAME]


def _verdicts(items: list[Item]) -> list[tuple[str, str | None]]:
    """Classify the events in order, with `started` taken from the feed as the monitor does."""
    started = False
    verdicts: list[tuple[str, str | None]] = []
    for item in items:
        if not isinstance(item, EngineEvent):
            continue
        verdict = classify(item, started=started, stopping=False)
        verdicts.append((f"{item.kind} {item.action}", None if verdict is None else verdict[0]))
        if item.kind == "container" and item.action == "start":
            started = True
    return verdicts


def test_feed_sees_cli_tampering(watched_container: WatchedContainer) -> None:
    feed = EventFeed(
        _connect_to("unix://" + DOCKER_SOCKET), watched=lambda container_id: container_id == watched_container.id,
        since=watched_container.since,
    )
    seen: list[Item] = []

    async def main() -> None:
        async with aclosing(feed.__aiter__()) as events:
            await _read_until(events, seen, _is_action("start"), "the container's start event")

            container_id = watched_container.id
            for command in (["pause", container_id], ["unpause", container_id], ["exec", container_id, "true"]):
                await anyio.run_process(["docker", *command])

            def all_seen(_: Item) -> bool:
                actions = {item.action for item in seen if isinstance(item, EngineEvent)}
                return TAMPERING_ACTIONS <= actions

            await _read_until(events, seen, all_seen, "the pause, unpause and exec events")

    anyio.run(main)

    verdicts = dict(_verdicts(seen))
    assert verdicts["container create"] is None
    assert verdicts["network connect"] is None
    assert verdicts["container start"] is None
    for action in TAMPERING_ACTIONS:
        assert verdicts[f"container {action}"] == "tampering", action
    assert not any(isinstance(item, FeedGap) for item in seen)
    assert _reader_threads() == []


def test_feed_survives_dropped_connection(watched_container: WatchedContainer, proxy: EventsProxy) -> None:
    feed = EventFeed(
        _connect_to(f"unix://{proxy.path}"), watched=lambda container_id: container_id == watched_container.id,
        since=watched_container.since, attempts=3, retry_delay=0.2,
    )
    seen: list[Item] = []
    severed: list[int] = []

    async def main() -> None:
        async with aclosing(feed.__aiter__()) as events:
            await _read_until(events, seen, _is_action("start"), "the container's start event")

            severed.append(proxy.sever_events())
            gap = await _read_until(events, seen, lambda item: isinstance(item, FeedGap), "a FeedGap")
            assert isinstance(gap, FeedGap)
            assert gap.since >= watched_container.since

            await anyio.run_process(["docker", "pause", watched_container.id])
            await _read_until(events, seen, _is_action("pause"), "the pause after the reconnect")

            proxy.stop()
            with pytest.raises(FeedLost, match="3 connection attempts in a row failed"):
                await _read_until(events, seen, lambda _: False, "FeedLost", seconds=10)

    anyio.run(main)

    assert severed == [1]
    labels = [item.action if isinstance(item, EngineEvent) else "gap" for item in seen]
    # The replay after the reconnect repeats no event that arrived before the cut.
    assert labels.count("start") == 1
    assert labels.count("pause") == 1
    assert labels.index("gap") < labels.index("pause")
    assert _reader_threads() == []
