"""Unit tests of the broker's proxy, in process: a mock upstream on loopback and a fake resolver.

The agent's network is played by 127.0.0.0/8, and the mock upstream's name
resolves to 127.0.0.1 only through the test's resolver, so nothing here leaves
the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.broker.config import AgentConfig, ApiRoute, BrokerConfig
from orchestrator.broker.policy import HostPolicy, IPAddress
from orchestrator.broker.proxy import Broker

SECRET = "sk-test-secret-0123456789"
LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class Upstream:
    """A mock model API: it records every request head and body and responds with a streamed body."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return  # The broker refused the request after it connected.
        self.heads.append(head)
        length = 0
        chunked = b"transfer-encoding: chunked" in head.lower()
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if chunked:
            body = b""
            while not body.endswith(b"0\r\n\r\n"):
                data = await reader.read(1024)
                if not data:
                    break  # The broker cut the body.
                body += data
        else:
            body = await reader.readexactly(length)
        self.bodies.append(body)
        if head.startswith(b"GET /base/echo "):
            # An upstream that reflects the request: the key in a header, and the whole head in the body.
            key = b"".join(line for line in head.split(b"\r\n") if line.lower().startswith(b"x-api-key:"))
            writer.write(b"HTTP/1.1 200 OK\r\nX-Echo: %s\r\nContent-Length: %d\r\n\r\n%s" % (key, len(head), head))
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\n")
        try:
            for index in range(3):
                writer.write(b"data: event %d\n\n" % index)
                await writer.drain()
        except ConnectionError:
            pass  # The broker cut the exchange at a limit.
        writer.close()


@dataclass
class Harness:
    broker: Broker
    upstream: Upstream
    events: list[dict[str, Any]]

    async def request(self, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.broker.listening_port())
        writer.write(raw)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return response


def agent_config(upstream_port: int, **changes: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "name": "alpha",
        "address": "127.0.0.1",
        "subnet": ipaddress.ip_network("127.0.0.0/8"),
        "hosts": HostPolicy.from_lists(
            [f"allowed.test:{upstream_port}"], [], [f"mock-api:{upstream_port}", f"allowed.test:{upstream_port}"]
        ),
        "apis": {"anthropic": ApiRoute("anthropic", "http", "mock-api", upstream_port, "/base", "x-api-key", SECRET)},
        "max_requests": 100,
        "max_bytes": 1_000_000,
    }
    values.update(changes)
    return AgentConfig(**values)


async def fake_resolve(host: str, port: int) -> list[IPAddress]:
    if host in ("mock-api", "allowed.test", "private.test"):
        return [LOOPBACK]
    raise OSError(f"unknown host {host}")


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness() -> AsyncIterator[HarnessFactory]:
    servers: list[asyncio.Server] = []
    brokers: list[Broker] = []

    async def make(**changes: Any) -> Harness:
        upstream = Upstream()
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        events: list[dict[str, Any]] = []
        config = BrokerConfig(port=0, agents=(agent_config(upstream.port, **changes),))
        broker = Broker(config, events.append, resolve=fake_resolve, answer_dns=False)
        await broker.start()
        brokers.append(broker)
        return Harness(broker, upstream, events)

    yield make
    for broker in brokers:
        broker.close()
    for server in servers:
        server.close()


def requests_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == "request"]


@pytest.mark.anyio
async def test_api_request_gets_secret_header(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(
        b"POST /anthropic/v1/messages?beta=1 HTTP/1.1\r\nHost: orchestrate-broker\r\n"
        b"x-api-key: placeholder\r\nAuthorization: Bearer forged\r\nContent-Length: 5\r\n\r\nhello"
    )

    head = test.upstream.heads[0].decode()
    assert head.startswith("POST /base/v1/messages?beta=1 HTTP/1.1\r\n")
    assert f"x-api-key: {SECRET}" in head
    assert "placeholder" not in head
    assert "forged" not in head
    assert test.upstream.bodies == [b"hello"]
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"data: event 2" in response
    assert SECRET.encode() not in response


@pytest.mark.anyio
async def test_chunked_request_body_forwarded(harness: HarnessFactory) -> None:
    test = await harness()

    await test.request(
        b"POST /anthropic/v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    assert test.upstream.bodies == [b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]


@pytest.mark.anyio
async def test_request_event_has_no_secret_or_headers(harness: HarnessFactory) -> None:
    test = await harness()

    await test.request(b"GET /anthropic/v1/models HTTP/1.1\r\nx-api-key: placeholder\r\n\r\n")

    [event] = requests_of(test.events)
    assert event["agent"] == "alpha"
    assert event["method"] == "GET"
    assert event["host"] == "mock-api"
    assert event["path"] == "/anthropic/v1/models"
    assert event["status"] == 200
    assert event["bytes_received"] > 0
    assert SECRET not in repr(test.events)
    assert "placeholder" not in repr(test.events)


@pytest.mark.anyio
async def test_connect_to_unlisted_port_denied(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(b"CONNECT allowed.test:1 HTTP/1.1\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 403")
    [event] = requests_of(test.events)
    assert event["denied"]


@pytest.mark.anyio
async def test_connect_to_allowed_host_tunnels(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(
        f"CONNECT allowed.test:{test.upstream.port} HTTP/1.1\r\n\r\n".encode()
        + b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )

    assert response.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    # A tunnel carries the agent's bytes as they are: no key is added to it.
    assert SECRET.encode() not in test.upstream.heads[0]


@pytest.mark.anyio
async def test_plain_http_to_other_host_rejected(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(b"GET http://allowed.test/ HTTP/1.1\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 405")
    assert test.upstream.heads == []


@pytest.mark.anyio
async def test_unknown_api_not_found(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(b"GET /openai/v1/models HTTP/1.1\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 404")


@pytest.mark.anyio
async def test_request_limit_refuses_and_reports(harness: HarnessFactory) -> None:
    test = await harness(max_requests=2)

    statuses = []
    for _ in range(4):
        response = await test.request(b"GET /anthropic/v1/models HTTP/1.1\r\n\r\n")
        statuses.append(response.split(b" ")[1])

    assert statuses == [b"200", b"200", b"429", b"429"]
    limits = [event for event in test.events if event["event"] == "limit"]
    assert limits == [{"event": "limit", "agent": "alpha", "limit": "requests", "value": 3, "max": 2}]
    assert len(test.upstream.heads) == 2


@pytest.mark.anyio
async def test_byte_limit_cuts_stream(harness: HarnessFactory) -> None:
    # One exchange is about 220 bytes (a 105-byte head to the upstream and a 116-byte response): the first
    # fits, the second crosses the limit mid-stream.
    test = await harness(max_bytes=380)

    first = await test.request(b"GET /anthropic/v1/models HTTP/1.1\r\n\r\n")
    second = await test.request(b"GET /anthropic/v1/models HTTP/1.1\r\n\r\n")
    third = await test.request(b"GET /anthropic/v1/models HTTP/1.1\r\n\r\n")

    assert first.endswith(b"data: event 2\n\n")
    assert b"data: event 2" not in second
    assert third.startswith(b"HTTP/1.1 429")
    assert [event["limit"] for event in test.events if event["event"] == "limit"] == ["bytes"]


@pytest.mark.anyio
async def test_header_smuggling_rejected(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(
        b"POST /anthropic/v1 HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )

    assert response.startswith(b"HTTP/1.1 400")
    assert test.upstream.heads == []


@pytest.mark.anyio
async def test_expect_header_not_forwarded(harness: HarnessFactory) -> None:
    test = await harness()

    await test.request(b"POST /anthropic/v1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")

    assert b"expect" not in test.upstream.heads[0].lower()
    assert test.upstream.bodies == [b"hi"]


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [
    # A bare LF inside a header value: an upstream that ends lines at LF would read a second header or request.
    b"POST /anthropic/v1 HTTP/1.1\r\nX-Note: a\nContent-Length: 0\r\nContent-Length: 2\r\n\r\nhi",
    # A bare LF inside the request target puts a header of the agent's into the upstream's request line.
    b"GET /anthropic/v1\nx-api-key:forged HTTP/1.1\r\n\r\n",
    # A bare CR and a NUL, which some servers take for line ends or string ends.
    b"GET /anthropic/v1 HTTP/1.1\r\nX-Note: a\rTransfer-Encoding: chunked\r\n\r\n",
    b"GET /anthropic/v1 HTTP/1.1\r\nX-Note: a\x00b\r\n\r\n",
])
async def test_control_characters_in_head_rejected(harness: HarnessFactory, raw: bytes) -> None:
    test = await harness()

    response = await test.request(raw)

    assert response.startswith(b"HTTP/1.1 400")
    assert test.upstream.heads == []


@pytest.mark.anyio
@pytest.mark.parametrize(("raw", "status"), [
    # "\xb2" (superscript two) passes str.isdigit in Latin-1 but int() refuses it.
    (b"CONNECT allowed.test:\xb2 HTTP/1.1\r\n\r\n", b"400"),
    (b"POST /anthropic/v1 HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", b"400"),
    # An out-of-range port on the broker's own name: urlsplit raises on it; the API route ignores the port.
    (b"GET http://orchestrate-broker:99999/anthropic/v1 HTTP/1.1\r\n\r\n", b"200"),
])
async def test_odd_numbers_get_a_response(harness: HarnessFactory, raw: bytes, status: bytes) -> None:
    test = await harness()

    response = await test.request(raw)

    # Before, each of these raised in the handler: the agent got no answer and the broker logged a traceback.
    assert response.startswith(b"HTTP/1.1 " + status)


@pytest.mark.anyio
async def test_huge_chunk_is_streamed_and_limited(harness: HarnessFactory) -> None:
    # A chunk that announces 64 MiB: the broker must pass it on as it arrives, not hold it in memory until it
    # is complete, so the byte limit cuts it after 200 kB rather than never.
    test = await harness(max_bytes=200_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", test.broker.listening_port())
    writer.write(b"POST /anthropic/v1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4000000\r\n")
    try:
        for _ in range(40):
            writer.write(b"x" * 10_000)
            await writer.drain()
        await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        pass  # The broker closed the connection with the agent's bytes unread: a reset.
    writer.close()

    assert [event["limit"] for event in test.events if event["event"] == "limit"] == ["bytes"]


@pytest.mark.anyio
async def test_request_head_counts_against_byte_limit(harness: HarnessFactory) -> None:
    test = await harness(max_bytes=1_000)

    response = await test.request(b"GET /anthropic/v1 HTTP/1.1\r\nX-Pad: " + b"p" * 5_000 + b"\r\n\r\n")

    assert test.upstream.heads == []
    assert not response.startswith(b"HTTP/1.1 200")
    assert [event["limit"] for event in test.events if event["event"] == "limit"] == ["bytes"]


@pytest.mark.anyio
async def test_reflected_key_masked_in_response(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(b"GET /anthropic/echo HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 200")
    assert SECRET.encode() not in response
    assert b"X-Echo: x-api-key: " + b"*" * len(SECRET) in response
    assert b"accept-encoding: identity" in response.lower()


@pytest.mark.anyio
@pytest.mark.parametrize("path", [
    b"/anthropic/../admin", b"/anthropic/v1/./../../admin", b"/anthropic/%2e%2e/admin", b"/anthropic/v1%2F..%2Fadmin",
    b"/anthropic/..\\admin",
])
async def test_path_leaving_base_rejected(harness: HarnessFactory, path: bytes) -> None:
    test = await harness()

    response = await test.request(b"GET " + path + b" HTTP/1.1\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400")
    assert test.upstream.heads == []


@pytest.mark.anyio
async def test_invalid_head_is_reported(harness: HarnessFactory) -> None:
    test = await harness()

    await test.request(b"GET /anthropic/v1 HTTP/1.1\r\nX: a\nHost: other\r\n\r\n")

    [event] = requests_of(test.events)
    assert event["kind"] == "invalid"
    assert event["status"] == 400
    assert "control character" in event["denied"]


@pytest.mark.anyio
async def test_invalid_heads_count_against_limit(harness: HarnessFactory) -> None:
    test = await harness(max_requests=2)

    statuses = []
    for _ in range(5):
        response = await test.request(b"GET /anthropic/v1 HTTP/1.1\r\nX: a\nB: c\r\n\r\n")
        statuses.append(response.split(b" ")[1])

    assert statuses == [b"400", b"400", b"429", b"429", b"429"]
    assert len(requests_of(test.events)) == 2
    assert [event["limit"] for event in test.events if event["event"] == "limit"] == ["requests"]


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [
    b"Content-Length: 0\r\nContent-Length: 10\r\n",
    b"Content-Length: 2\r\ncontent-length: 2\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
])
async def test_repeated_framing_headers_rejected(harness: HarnessFactory, headers: bytes) -> None:
    test = await harness()

    # The broker and the upstream could each pick a different copy and disagree on where the body ends.
    response = await test.request(b"POST /anthropic/v1 HTTP/1.1\r\n" + headers + b"\r\n0\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400")
    assert test.upstream.heads == []


@pytest.mark.anyio
async def test_one_agent_exhausting_connections_spares_another() -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    agents = (
        agent_config(upstream.port, name="hog", subnet=ipaddress.ip_network("127.0.0.1/32")),
        agent_config(upstream.port, name="calm", address="127.0.0.2", subnet=ipaddress.ip_network("127.0.0.2/32")),
    )
    broker = Broker(BrokerConfig(port=0, agents=agents), [].append, resolve=fake_resolve, answer_dns=False)
    await broker.start()
    held: list[asyncio.StreamWriter] = []
    try:
        # The hog opens its 128 connections and sends nothing (slowloris), then 20 more that are turned away.
        for _ in range(148):
            _, writer = await asyncio.open_connection("127.0.0.1", broker.listening_port(0))
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.2", broker.listening_port(1),
                                                       local_addr=("127.0.0.2", 0))
        writer.write(b"GET /anthropic/v1/models HTTP/1.1\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        for writer in held:
            writer.close()
        broker.close()
        server.close()

    assert response.startswith(b"HTTP/1.1 200")


@pytest.mark.anyio
async def test_oversized_head_rejected(harness: HarnessFactory) -> None:
    test = await harness()

    response = await test.request(b"GET /anthropic/v1 HTTP/1.1\r\nX-Pad: " + b"p" * 70_000 + b"\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400")
    assert b"longer than 65536 bytes" in response
    assert test.upstream.heads == []


@pytest.mark.anyio
@pytest.mark.parametrize("body", [
    # The broker reads size 5 with the extension "x\nFFFF"; an upstream that ends lines at LF reads size FFFF.
    b"5;x\nFFFF\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-Trailer: a\nGET /admin HTTP/1.1\r\n\r\n",
])
async def test_control_character_in_chunk_line_rejected(harness: HarnessFactory, body: bytes) -> None:
    test = await harness()

    response = await test.request(b"POST /anthropic/v1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)

    assert response.startswith(b"HTTP/1.1 400")
    assert b"control character" in response
