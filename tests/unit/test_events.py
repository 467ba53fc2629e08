"""The Docker event feed against a scripted engine, and the tampering rule for every action.

The scripted engine hands out one stream per connection. A stream can end the
way docker-py's does when the daemon connection drops (a plain StopIteration),
raise a requests ConnectionError midway, or block until it is closed, like an
idle engine.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import aclosing
from typing import Any

import anyio
import pytest
import requests.exceptions

from orchestrator.events import (
    READER_THREAD_NAME,
    RESUME_OVERLAP_NS,
    EngineEvent,
    EventFeed,
    FeedGap,
    FeedLost,
    classify,
    parse_event,
)

WATCHED = "c" * 64
OTHER = "d" * 64
BASE_NANO = 1_700_000_000_000_000_000


def raw_event(
    action: str, *, container: str = WATCHED, nano: int = BASE_NANO, kind: str = "container",
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return an event as Docker 20.10 sends it."""
    if kind == "network":
        actor = {"ID": "n" * 64, "Attributes": {"container": container, "name": "none", "type": "null"}}
    else:
        actor = {"ID": container, "Attributes": {"image": "orchestrate/base:latest", "name": "agent"}}
    actor["Attributes"].update(attributes or {})
    return {"Type": kind, "Action": action, "Actor": actor, "scope": "local",
            "time": nano // 1_000_000_000, "timeNano": nano}


class FakeStream:
    """One events response: its items, then the end the test chose."""

    def __init__(self, items: list[dict[str, Any]], *, error: Exception | None = None, block: bool = False) -> None:
        self.items = list(items)
        self.error = error
        self.block = block
        self.closed = threading.Event()

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.items and not self.closed.is_set():
            return self.items.pop(0)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.block:
            # Like a socket read: returns once close() shuts the connection down.
            self.closed.wait()
        raise StopIteration

    def close(self) -> None:
        self.closed.set()


class FakeClient:
    def __init__(self, engine: FakeEngine, stream: FakeStream) -> None:
        self.engine = engine
        self.stream = stream
        self.closed = False

    def events(self, *, since: Any = None, filters: Any = None, decode: Any = None) -> FakeStream:
        self.engine.requests.append({"since": since, "filters": filters, "decode": decode})
        return self.stream

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """An engine that serves each connection with the next scripted entry: a stream, or an exception to raise."""

    def __init__(self, *script: FakeStream | Exception) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.clients: list[FakeClient] = []
        self.connections = 0

    def connect(self) -> Any:
        self.connections += 1
        if not self.script:
            raise requests.exceptions.ConnectionError("the scripted engine is gone")
        entry = self.script.pop(0)
        if isinstance(entry, Exception):
            raise entry
        client = FakeClient(self, entry)
        self.clients.append(client)
        return client


def make_feed(engine: FakeEngine, **options: Any) -> EventFeed:
    options.setdefault("watched", lambda container_id: container_id == WATCHED)
    options.setdefault("retry_delay", 0)
    options.setdefault("since", BASE_NANO / 1e9)
    return EventFeed(engine.connect, **options)


def collect(feed: EventFeed, count: int, *, timeout: float = 5) -> list[EngineEvent | FeedGap]:
    """Iterate the feed until `count` items arrived or iteration ended, then close it."""

    async def main() -> list[EngineEvent | FeedGap]:
        items: list[EngineEvent | FeedGap] = []
        with anyio.fail_after(timeout):
            async with aclosing(feed.__aiter__()) as iterator:
                async for item in iterator:
                    items.append(item)
                    if len(items) == count:
                        break
        return items

    return anyio.run(main)


def since_text(nano: int) -> str:
    return f"{nano // 1_000_000_000}.{nano % 1_000_000_000:09d}"


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == READER_THREAD_NAME]


# parse_event


def test_parse_exec_action_split_from_command() -> None:
    event = parse_event(raw_event("exec_start: sh -c echo hi", attributes={"execID": "e" * 64}))

    assert event is not None
    assert event.action == "exec_start"
    assert event.argument == "sh -c echo hi"
    assert event.container_id == WATCHED
    assert event.time_nano == BASE_NANO


def test_parse_network_event_names_container() -> None:
    event = parse_event(raw_event("connect", kind="network"))

    assert event is not None
    assert event.kind == "network"
    assert event.container_id == WATCHED
    assert event.attributes["name"] == "none"


def test_parse_skips_events_without_container() -> None:
    network_created = {"Type": "network", "Action": "create", "Actor": {"ID": "n", "Attributes": {"name": "x"}},
                       "timeNano": BASE_NANO}
    image_pulled = {"Type": "image", "Action": "pull", "Actor": {"ID": "sha256:1", "Attributes": {}},
                    "timeNano": BASE_NANO}

    assert parse_event(network_created) is None
    assert parse_event(image_pulled) is None


def test_parse_falls_back_to_seconds() -> None:
    raw = raw_event("start")
    del raw["timeNano"]

    event = parse_event(raw)

    assert event is not None
    assert event.time_nano == (BASE_NANO // 1_000_000_000) * 1_000_000_000


def test_event_to_json_round_trips_fields() -> None:
    event = parse_event(raw_event("kill", attributes={"signal": "9"}))

    assert event is not None
    document = event.to_json()
    assert document["action"] == "kill"
    assert document["container_id"] == WATCHED
    assert document["time_nano"] == BASE_NANO
    assert document["attributes"] == event.attributes


# classify

FLAGS = list(itertools.product([False, True], repeat=3))
ALWAYS = {"exec_create", "exec_start", "pause", "unpause", "update", "rename", "restart", "extract-to-dir"}
NEVER = {"die", "start", "create", "exec_die", "exec_detach", "resize", "top", "archive-path", "detach",
         "export", "commit", "health_status"}


def _event(action: str, kind: str = "container", **attributes: str) -> EngineEvent:
    return EngineEvent(kind=kind, action=action, container_id=WATCHED, time_nano=BASE_NANO,
                       attributes=dict(attributes))


def _kind(event: EngineEvent, started: bool, stopping: bool, exited: bool) -> str | None:
    verdict = classify(event, started=started, stopping=stopping, exited=exited)
    return None if verdict is None else verdict[0]


@pytest.mark.parametrize("action", sorted(ALWAYS))
def test_classify_always_tampering(action: str) -> None:
    for started, stopping, exited in FLAGS:
        assert _kind(_event(action), started, stopping, exited) == "tampering", (started, stopping, exited)


@pytest.mark.parametrize("action", sorted(NEVER))
def test_classify_never_flagged(action: str) -> None:
    for started, stopping, exited in FLAGS:
        assert _kind(_event(action), started, stopping, exited) is None, (started, stopping, exited)


@pytest.mark.parametrize("action", ["kill", "stop", "destroy"])
def test_classify_stop_actions_unless_stopping(action: str) -> None:
    for started, stopping, exited in FLAGS:
        expected = None if stopping else "tampering"
        assert _kind(_event(action), started, stopping, exited) == expected, (started, stopping, exited)


def test_classify_attach_only_after_start() -> None:
    for started, stopping, exited in FLAGS:
        expected = "tampering" if started else None
        assert _kind(_event("attach"), started, stopping, exited) == expected, (started, stopping, exited)


def test_classify_network_connect_only_after_start() -> None:
    for started, stopping, exited in FLAGS:
        expected = "tampering" if started else None
        assert _kind(_event("connect", "network"), started, stopping, exited) == expected, (started, stopping, exited)


def test_classify_network_disconnect_while_running() -> None:
    # The engine itself disconnects a container's networks after it dies, and while it is being stopped.
    for started, stopping, exited in FLAGS:
        expected = "tampering" if started and not stopping and not exited else None
        verdict = _kind(_event("disconnect", "network"), started, stopping, exited)
        assert verdict == expected, (started, stopping, exited)


def test_classify_oom_always() -> None:
    for started, stopping, exited in FLAGS:
        assert _kind(_event("oom"), started, stopping, exited) == "oom", (started, stopping, exited)


def test_classify_unknown_action_ignored() -> None:
    assert classify(_event("something-new"), started=True, stopping=False) is None


def test_detail_names_signal() -> None:
    verdict = classify(_event("kill", signal="9"), started=True, stopping=False)

    assert verdict is not None
    assert "kill" in verdict[1]
    assert "signal 9" in verdict[1]


def test_detail_names_exec_command_and_id() -> None:
    event = EngineEvent(kind="container", action="exec_create", container_id=WATCHED, time_nano=BASE_NANO,
                        attributes={"execID": "0123456789ab" + "f" * 52}, argument="cat /etc/shadow")

    verdict = classify(event, started=True, stopping=False)

    assert verdict is not None
    assert "exec_create" in verdict[1]
    assert "cat /etc/shadow" in verdict[1]
    assert "exec 0123456789ab" in verdict[1]


def test_detail_names_network() -> None:
    verdict = classify(_event("connect", "network", name="bridge"), started=True, stopping=False)

    assert verdict is not None
    assert "network connect" in verdict[1]
    assert "'bridge'" in verdict[1]


def test_detail_drops_control_characters() -> None:
    event = EngineEvent(kind="container", action="exec_start", container_id=WATCHED, time_nano=BASE_NANO,
                        attributes={}, argument="sh\x1b[2J\r\n\u202eevil\x00")

    verdict = classify(event, started=True, stopping=False)

    assert verdict is not None
    assert "command 'sh[2Jevil'" in verdict[1]
    for char in "\x1b\r\n\u202e\x00":
        assert char not in verdict[1]


def test_detail_length_is_capped() -> None:
    event = EngineEvent(kind="container", action="exec_start", container_id=WATCHED, time_nano=BASE_NANO,
                        attributes={}, argument="x" * 5000)

    verdict = classify(event, started=True, stopping=False)

    assert verdict is not None
    assert len(verdict[1]) <= 300


# EventFeed


def test_feed_passes_filters_and_since() -> None:
    engine = FakeEngine(FakeStream([raw_event("start")]))

    items = collect(make_feed(engine), 1)

    assert [item.action for item in items if isinstance(item, EngineEvent)] == ["start"]
    assert engine.requests[0]["since"] == since_text(BASE_NANO)
    assert engine.requests[0]["filters"] == {"type": ["container", "network"]}
    assert engine.requests[0]["decode"] is True


def test_feed_yields_only_watched_containers() -> None:
    engine = FakeEngine(FakeStream([
        raw_event("start", container=OTHER, nano=BASE_NANO + 1),
        raw_event("connect", kind="network", container=OTHER, nano=BASE_NANO + 2),
        raw_event("connect", kind="network", nano=BASE_NANO + 3),
        raw_event("pause", nano=BASE_NANO + 4),
    ], block=True))

    items = collect(make_feed(engine), 2)

    assert [(item.kind, item.action) for item in items if isinstance(item, EngineEvent)] == [
        ("network", "connect"), ("container", "pause"),
    ]


def test_feed_gap_when_stream_ends() -> None:
    last = BASE_NANO + 5_000_000_000
    first = FakeStream([raw_event("start", nano=BASE_NANO + 1), raw_event("pause", nano=last)])
    second = FakeStream([raw_event("unpause", nano=last + 1)], block=True)
    engine = FakeEngine(first, second)

    items = collect(make_feed(engine), 4)

    gap = items[2]
    assert isinstance(gap, FeedGap)
    assert gap.reason == "the engine closed the event stream"
    assert gap.since == (last - RESUME_OVERLAP_NS) / 1e9
    assert engine.requests[1]["since"] == since_text(last - RESUME_OVERLAP_NS)
    assert isinstance(items[3], EngineEvent)
    assert items[3].action == "unpause"


def test_feed_gap_when_stream_raises() -> None:
    last = BASE_NANO + 7
    first = FakeStream([raw_event("start", nano=last)],
                       error=requests.exceptions.ConnectionError("Connection aborted"))
    second = FakeStream([raw_event("exec_create: true ", nano=last + 1)], block=True)
    engine = FakeEngine(first, second)

    items = collect(make_feed(engine), 3)

    gap = items[1]
    assert isinstance(gap, FeedGap)
    assert "ConnectionError" in gap.reason
    assert "Connection aborted" in gap.reason
    assert isinstance(items[2], EngineEvent)
    assert items[2].action == "exec_create"


def test_feed_skips_replayed_events() -> None:
    # The engine replays from `since`, which lies before the last event, so old events come again.
    start, pause = raw_event("start", nano=BASE_NANO + 1), raw_event("pause", nano=BASE_NANO + 2)
    first = FakeStream([start, pause])
    second = FakeStream([start, pause, raw_event("unpause", nano=BASE_NANO + 3)], block=True)
    engine = FakeEngine(first, second)

    items = collect(make_feed(engine), 4)

    names = [item.action if isinstance(item, EngineEvent) else "gap" for item in items]
    assert names == ["start", "pause", "gap", "unpause"]


def test_feed_replays_late_event_within_overlap() -> None:
    # An event stamped just before the last one but delivered only after the reconnect still arrives.
    first = FakeStream([raw_event("pause", nano=BASE_NANO + 10)])
    second = FakeStream([raw_event("exec_start: sh", nano=BASE_NANO + 9)], block=True)
    engine = FakeEngine(first, second)

    items = collect(make_feed(engine), 3)

    assert isinstance(items[2], EngineEvent)
    assert items[2].action == "exec_start"


def test_feed_retries_failed_connections() -> None:
    down = requests.exceptions.ConnectionError("connection refused")
    engine = FakeEngine(FakeStream([raw_event("start", nano=BASE_NANO + 1)]), down, down,
                        FakeStream([raw_event("pause", nano=BASE_NANO + 2)], block=True))

    items = collect(make_feed(engine, attempts=3), 3)

    assert isinstance(items[1], FeedGap)
    assert isinstance(items[2], EngineEvent)
    assert engine.connections == 4


def test_feed_lost_after_attempts() -> None:
    engine = FakeEngine(FakeStream([raw_event("start", nano=BASE_NANO + 1)]))
    feed = make_feed(engine, attempts=3)

    with pytest.raises(FeedLost) as caught:
        collect(feed, 10)

    # One connection that worked, then three that failed in a row.
    assert engine.connections == 4
    assert "3 connection attempts in a row failed" in str(caught.value)
    assert "stop the run's agents" in str(caught.value)
    assert reader_threads() == []


def test_feed_lost_when_never_connected() -> None:
    engine = FakeEngine()

    with pytest.raises(FeedLost):
        collect(make_feed(engine, attempts=2), 1)

    assert engine.connections == 2


def test_feed_lost_when_streams_end_empty() -> None:
    # A stream that opens and ends at once, again and again, must not loop forever.
    engine = FakeEngine(*(FakeStream([]) for _ in range(10)))

    with pytest.raises(FeedLost) as caught:
        collect(make_feed(engine, attempts=3), 100)

    assert engine.connections == 3
    assert "the engine closed the event stream" in str(caught.value)


def test_feed_closes_streams_and_clients() -> None:
    engine = FakeEngine(FakeStream([raw_event("start", nano=BASE_NANO + 1)]),
                        FakeStream([raw_event("pause", nano=BASE_NANO + 2)], block=True))

    collect(make_feed(engine), 3)

    assert all(client.stream.closed.is_set() for client in engine.clients)
    assert all(client.closed for client in engine.clients)


def test_close_ends_iteration_without_threads() -> None:
    threads_before = set(threading.enumerate())
    stream = FakeStream([raw_event("start", nano=BASE_NANO + 1)], block=True)
    engine = FakeEngine(stream)
    feed = make_feed(engine)
    received: list[EngineEvent | FeedGap] = []

    async def main() -> None:
        with anyio.fail_after(5):
            async for item in feed:
                received.append(item)
                feed.close()

    anyio.run(main)

    assert len(received) == 1
    assert stream.closed.is_set()
    assert engine.clients[0].closed
    assert set(threading.enumerate()) == threads_before


def test_close_from_other_thread() -> None:
    stream = FakeStream([raw_event("start", nano=BASE_NANO + 1)], block=True)
    feed = make_feed(FakeEngine(stream))
    first_event = threading.Event()
    closer = threading.Thread(target=lambda: first_event.wait(5) and feed.close(), name="test-closer")

    async def main() -> None:
        closer.start()
        with anyio.fail_after(5):
            async for _ in feed:
                first_event.set()

    anyio.run(main)
    closer.join(5)

    assert stream.closed.is_set()
    assert reader_threads() == []


def test_close_before_iteration() -> None:
    engine = FakeEngine(FakeStream([raw_event("start")], block=True))
    feed = make_feed(engine)
    feed.close()

    assert collect(feed, 1) == []
    assert reader_threads() == []


def test_cancelled_consumer_stops_reader() -> None:
    threads_before = set(threading.enumerate())
    stream = FakeStream([], block=True)
    feed = make_feed(FakeEngine(stream))

    async def main() -> None:
        with anyio.move_on_after(0.2):
            async for _ in feed:
                pass

    anyio.run(main)

    assert stream.closed.is_set()
    assert set(threading.enumerate()) == threads_before


def test_close_during_retry_delay() -> None:
    engine = FakeEngine(requests.exceptions.ConnectionError("refused"))
    feed = make_feed(engine, attempts=100, retry_delay=60)

    async def main() -> None:
        async def close_soon() -> None:
            await anyio.sleep(0.1)
            feed.close()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(close_soon)
                async for _ in feed:
                    pass

    anyio.run(main)

    assert engine.connections == 1
    assert reader_threads() == []


def test_feed_iterates_once() -> None:
    feed = make_feed(FakeEngine(FakeStream([], block=True)))

    async def main() -> None:
        async with aclosing(feed.__aiter__()) as first:
            with anyio.move_on_after(0.05):
                await first.__anext__()
        async with aclosing(feed.__aiter__()) as second:
            await second.__anext__()

    with pytest.raises(RuntimeError, match="only once"):
        anyio.run(main)


def test_feed_rejects_invalid_options() -> None:
    engine = FakeEngine()

    with pytest.raises(ValueError, match="attempts"):
        EventFeed(engine.connect, watched=lambda _: True, attempts=0)
    with pytest.raises(ValueError, match="retry_delay"):
        EventFeed(engine.connect, watched=lambda _: True, retry_delay=-1)
