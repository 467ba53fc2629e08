"""The broker's proxy: one listener per agent, CONNECT tunnels to allowed hosts, API routes with the key added.

An agent is identified by the listener its connection arrived on. Each
listener is bound to the broker's address on that agent's own internal
network, and the peer's address must lie in that network's subnet. Neither
can be forged by an agent without CAP_NET_RAW on a network it does not share.
Every request is reported as one JSON event; headers are never reported.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .config import AgentConfig, ApiRoute, BrokerConfig
from .dns import serve_dns
from .http import (
    CHUNK_BYTES,
    CONTROL,
    CREDENTIAL_HEADERS,
    HELD_BACK_HEADERS,
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    BadRequest,
    RequestHead,
    body_framing,
    parse_request_head,
    parse_status_head,
    plain_response,
    read_head,
    render_head,
)
from .policy import IPAddress
from .redact import Redactor

Emit = Callable[[dict[str, Any]], None]
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]

HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# A tunnel or stream with no byte in either direction for this long is closed.
IDLE_TIMEOUT = 600.0
MAX_CONNECTIONS_PER_AGENT = 128
# The name agents use for the broker; absolute-form requests to it are API requests.
BROKER_ALIAS = "orchestrate-broker"


class LimitReached(Exception):
    """The agent's request or byte limit is used up."""


@dataclass
class AgentState:
    config: AgentConfig
    requests: int = 0
    bytes: int = 0
    connections: int = 0
    limit_reported: bool = False
    # The limit that is used up; every later request is refused.
    exhausted: str | None = None
    refused_after_limit: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


@dataclass
class Exchange:
    """The record of one request, reported when it ends."""

    agent: str
    kind: str
    method: str
    host: str
    port: int
    path: str
    status: int = 0
    sent: int = 0
    received: int = 0
    denied: str | None = None
    started: float = field(default_factory=time.monotonic)


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=0, proto=6)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))


class Broker:
    def __init__(self, config: BrokerConfig, emit: Emit, *, resolve: Resolve = resolve_addresses,
                 answer_dns: bool = True) -> None:
        self.config = config
        self._answer_dns = answer_dns
        self._resolvers: list[asyncio.DatagramTransport] = []
        self._emit = emit
        self._resolve = resolve
        self._states = {agent.name: AgentState(agent) for agent in config.agents}
        self._servers: list[asyncio.Server] = []
        self._tls = ssl.create_default_context()

    async def start(self) -> None:
        for agent in self.config.agents:
            server = await asyncio.start_server(
                self._handler(agent.name), host=agent.address, port=self.config.port, limit=MAX_HEAD_BYTES,
            )
            self._servers.append(server)
            if self._answer_dns:
                transport = await serve_dns(agent.name, agent.address, self._emit)
                if transport is not None:
                    self._resolvers.append(transport)
        self._emit({"event": "ready", "port": self.config.port, "agents": [a.name for a in self.config.agents]})

    def listening_port(self, index: int = 0) -> int:
        """Return the port the index-th agent's listener is bound to (the configured one, unless that was 0)."""
        return int(self._servers[index].sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for transport in self._resolvers:
            transport.close()
        for state in self._states.values():
            for writer in list(state.writers):
                writer.close()

    def _handler(self, agent: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(agent, reader, writer)

        return handle

    # -- one connection --------------------------------------------------------------------------------

    async def _serve(self, agent: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state = self._states[agent]
        peer = str((writer.get_extra_info("peername") or ("", 0))[0]).partition("%")[0]
        try:
            if ipaddress.ip_address(peer) not in state.config.subnet:
                raise ValueError(peer)
        except ValueError:
            self._emit({"event": "foreign-peer", "agent": agent, "peer": peer})
            writer.close()
            return
        if state.connections >= MAX_CONNECTIONS_PER_AGENT:
            writer.write(plain_response(503, f"more than {MAX_CONNECTIONS_PER_AGENT} open connections"))
            writer.close()
            return

        state.connections += 1
        state.writers.add(writer)
        try:
            await self._serve_request(state, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            state.connections -= 1
            state.writers.discard(writer)
            writer.close()

    async def _serve_request(self, state: AgentState, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            head = parse_request_head(await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT))
        except BadRequest as exc:
            # Reported like any refused request, so an agent that probes the parser leaves a trace in the audit log.
            # It counts against the request limit too, or a flood of broken heads would flood the audit log.
            invalid = Exchange(state.config.name, "invalid", "", "", 0, "", status=400, denied=str(exc))
            try:
                self._admit(state)
            except LimitReached as limit:
                invalid.status, invalid.denied = 429, str(limit)
            self._report(state, invalid)
            writer.write(plain_response(invalid.status, str(invalid.denied)))
            return

        exchange = self._exchange(state.config.name, head)
        try:
            self._admit(state)
            if head.method == "CONNECT":
                await self._tunnel(state, exchange, reader, writer)
            else:
                await self._forward_api(state, exchange, head, reader, writer)
        except LimitReached as exc:
            exchange.status = 429
            exchange.denied = str(exc)
            if not writer.is_closing():
                writer.write(plain_response(429, str(exc)))
        except BadRequest as exc:
            exchange.status = 400
            exchange.denied = str(exc)
            writer.write(plain_response(400, str(exc)))
        finally:
            self._report(state, exchange)

    def _exchange(self, agent: str, head: RequestHead) -> Exchange:
        if head.method == "CONNECT":
            host, _, port = head.target.rpartition(":")
            # str.isdigit also accepts digits such as "\xb2" that int() rejects. Port 0 is rejected in _tunnel.
            return Exchange(agent, "connect", head.method, host.strip("[]").lower(),
                            int(port) if port.isascii() and port.isdigit() else 0, "")
        target = urlsplit(head.target)
        try:
            target_port = target.port or 0
        except ValueError:
            target_port = 0  # Out of range: urlsplit raises, and the API route does not use the port.
        return Exchange(agent, "api", head.method, (target.hostname or "").lower(), target_port, target.path)

    def _admit(self, state: AgentState) -> None:
        """Count the request against the agent's limits; raise LimitReached when one is used up."""
        config = state.config
        state.requests += 1
        if state.exhausted is not None:
            raise LimitReached(f"the egress {state.exhausted} limit is reached")
        if state.requests > config.max_requests:
            self._limit(state, "requests", state.requests, config.max_requests)
        if state.bytes >= config.max_bytes:
            self._limit(state, "bytes", state.bytes, config.max_bytes)

    def _limit(self, state: AgentState, limit_name: str, value: int, maximum: int, *, cut: bool = False) -> None:
        state.exhausted = limit_name
        if not state.limit_reported:
            state.limit_reported = True
            self._emit({"event": "limit", "agent": state.config.name, "limit": limit_name, "value": value,
                        "max": maximum})
        if cut:
            # The byte limit is used up, so every stream still open is cut, not only the one that crossed it.
            for writer in list(state.writers):
                writer.close()
        raise LimitReached(f"the egress {limit_name} limit of {maximum} is reached")

    def _report(self, state: AgentState, exchange: Exchange) -> None:
        if state.limit_reported and exchange.status == 429:
            # After the limit, refusals are counted rather than reported one by one.
            state.refused_after_limit += 1
            return
        self._emit({
            "event": "request", "agent": exchange.agent, "kind": exchange.kind, "method": exchange.method[:16],
            "host": exchange.host[:255], "port": exchange.port, "path": exchange.path[:512],
            "status": exchange.status, "bytes_sent": exchange.sent, "bytes_received": exchange.received,
            "seconds": round(time.monotonic() - exchange.started, 3), "denied": exchange.denied,
        })

    # -- CONNECT -----------------------------------------------------------------------------------------

    async def _tunnel(self, state: AgentState, exchange: Exchange, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if not exchange.host or not exchange.port:
            raise BadRequest("CONNECT needs host:port")
        upstream = await self._open(state, exchange, exchange.host, exchange.port, tls=False, writer=writer)
        if upstream is None:
            return
        upstream_reader, upstream_writer = upstream
        exchange.status = 200
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self._relay(state, exchange, reader, writer, upstream_reader, upstream_writer)

    async def _open(self, state: AgentState, exchange: Exchange, host: str, port: int, *, tls: bool,
                    writer: asyncio.StreamWriter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Check, resolve, check again and connect; on refusal send the agent an error response and return None."""
        hosts = state.config.hosts
        # An API request goes to its configured upstream, so only a tunnel's target needs an allow entry.
        decision = hosts.check_route(host, port) if exchange.kind == "api" else hosts.check_host(host, port)
        if decision.allowed:
            try:
                addresses = await asyncio.wait_for(self._resolve(host, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                self._refuse(exchange, writer, 502, f"{host} did not resolve: {exc}")
                return None
            decision = hosts.check_addresses(host, port, addresses)
        if not decision.allowed:
            self._refuse(exchange, writer, 403, decision.reason, denied=True)
            return None

        # The checked address is the one connected to, so a second resolution cannot swap it.
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                str(addresses[0]), port, ssl=self._tls if tls else None, server_hostname=host if tls else None,
                limit=MAX_HEAD_BYTES,
            ), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._refuse(exchange, writer, 502, f"connecting to {host}:{port} failed: {exc}")
            return None

    def _refuse(self, exchange: Exchange, writer: asyncio.StreamWriter, status: int, reason: str,
                *, denied: bool = False) -> None:
        exchange.status = status
        if denied:
            exchange.denied = reason
        writer.write(plain_response(status, reason))
        return None

    async def _relay(self, state: AgentState, exchange: Exchange, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, upstream_reader: asyncio.StreamReader,
                     upstream_writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(state, exchange, reader, upstream_writer, outbound=True))
                group.create_task(self._pipe(state, exchange, upstream_reader, writer, outbound=False))
        except* (ConnectionError, OSError, TimeoutError, LimitReached):
            pass
        finally:
            upstream_writer.close()

    async def _pipe(self, state: AgentState, exchange: Exchange, source: asyncio.StreamReader,
                    sink: asyncio.StreamWriter, *, outbound: bool, redactor: Redactor | None = None) -> None:
        while True:
            data = await asyncio.wait_for(source.read(CHUNK_BYTES), IDLE_TIMEOUT)
            if not data:
                held = redactor.flush() if redactor is not None else b""
                if held:
                    await self._send(state, exchange, sink, held, outbound=outbound)
                if sink.can_write_eof():
                    sink.write_eof()
                return
            if redactor is not None:
                data = redactor.feed(data)
            if data:
                await self._send(state, exchange, sink, data, outbound=outbound)

    async def _send(self, state: AgentState, exchange: Exchange, sink: asyncio.StreamWriter, data: bytes,
                    *, outbound: bool) -> None:
        config = state.config
        if state.bytes + len(data) > config.max_bytes:
            self._limit(state, "bytes", state.bytes + len(data), config.max_bytes, cut=True)
        state.bytes += len(data)
        if outbound:
            exchange.sent += len(data)
        else:
            exchange.received += len(data)
        sink.write(data)
        await sink.drain()

    # -- API routes --------------------------------------------------------------------------------------

    async def _forward_api(self, state: AgentState, exchange: Exchange, head: RequestHead,
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        route, rest, status = self._route(state, head)
        if route is None:
            exchange.denied = rest
            exchange.status = status
            writer.write(plain_response(exchange.status, rest))
            return
        exchange.host, exchange.port = route.host, route.port
        # Framing is checked before any upstream connection, so a smuggling attempt never reaches one.
        body_framing(head)
        upstream = await self._open(state, exchange, route.host, route.port, tls=route.scheme == "https",
                                    writer=writer)
        if upstream is None:
            return
        upstream_reader, upstream_writer = upstream
        try:
            # The head counts against the byte limit too, or 64 kB heads would pass uncounted.
            await self._send(state, exchange, upstream_writer, self._upstream_head(head, route, rest), outbound=True)
            await self._forward_body(state, exchange, head, reader, upstream_writer)
            await self._forward_response(state, exchange, upstream_reader, writer, Redactor([route.secret()]))
        finally:
            upstream_writer.close()

    def _route(self, state: AgentState, head: RequestHead) -> tuple[ApiRoute | None, str, int]:
        """Return the API route and the rest of the target (path and query), or None, the reason and its status."""
        target = urlsplit(head.target)
        if target.scheme or target.netloc:
            # An absolute-form target names a host: only the broker itself is served this way.
            if target.scheme != "http" or (target.hostname or "") not in (BROKER_ALIAS, state.config.address):
                return None, "only HTTPS through CONNECT and the broker's API routes are allowed", 405
        name, _, rest = target.path.lstrip("/").partition("/")
        route = state.config.apis.get(name)
        if route is None:
            return None, f"no API named {name!r} for this agent", 404
        if _leaves_base_path(rest):
            return None, "the path has a dot segment or an encoded slash or dot; write it plainly", 400
        query = f"?{target.query}" if target.query else ""
        return route, f"/{rest}{query}", 200

    def _upstream_head(self, head: RequestHead, route: ApiRoute, rest: str) -> bytes:
        dropped = HOP_BY_HOP | CREDENTIAL_HEADERS | HELD_BACK_HEADERS | {"host", "accept-encoding"}
        dropped |= {route.header.lower()}
        headers = [(name, value) for name, value in head.headers if name.lower() not in dropped]
        # An uncompressed response is one the broker can search for a reflected key.
        headers.append(("Accept-Encoding", "identity"))
        host = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
        headers.append(("Host", host))
        headers.append((route.header, route.header_value))
        framing, _ = body_framing(head)
        if framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Connection", "close"))
        return render_head(f"{head.method} {route.base_path}{rest} HTTP/1.1", headers)

    async def _forward_body(self, state: AgentState, exchange: Exchange, head: RequestHead,
                            reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        framing, length = body_framing(head)
        if framing == "length":
            remaining = length
            while remaining:
                data = await asyncio.wait_for(reader.read(min(remaining, CHUNK_BYTES)), IDLE_TIMEOUT)
                if not data:
                    raise BadRequest("the request body ended early")
                remaining -= len(data)
                await self._send(state, exchange, upstream, data, outbound=True)
        elif framing == "chunked":
            await self._forward_chunks(state, exchange, reader, upstream)

    async def _forward_chunks(self, state: AgentState, exchange: Exchange, reader: asyncio.StreamReader,
                              upstream: asyncio.StreamWriter) -> None:
        while True:
            line = await self._read_line(reader)
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                raise BadRequest("invalid chunk size")
            size = int(size_text, 16)
            await self._send(state, exchange, upstream, line, outbound=True)
            if size == 0:
                # Trailers, then the blank line that ends the body.
                while True:
                    trailer = await self._read_line(reader)
                    await self._send(state, exchange, upstream, trailer, outbound=True)
                    if trailer == b"\r\n":
                        return
            # The chunk is passed on as it arrives. Reading it whole would hold any announced size in the memory
            # that every agent's connections share, and the byte limit would see it only at the end.
            remaining = size
            while remaining:
                data = await asyncio.wait_for(reader.read(min(remaining, CHUNK_BYTES)), IDLE_TIMEOUT)
                if not data:
                    raise BadRequest("the request body ended inside a chunk")
                remaining -= len(data)
                await self._send(state, exchange, upstream, data, outbound=True)
            if await asyncio.wait_for(reader.readexactly(2), IDLE_TIMEOUT) != b"\r\n":
                raise BadRequest("a chunk does not end with CRLF")
            await self._send(state, exchange, upstream, b"\r\n", outbound=True)

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> bytes:
        """Read one chunk-size or trailer line; raise BadRequest for a control character inside it.

        A bare LF inside the line would end it early for some upstream servers, which would then read the
        chunk sizes differently from the broker.
        """
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise BadRequest(f"a chunk line is longer than {MAX_HEAD_BYTES} bytes") from None
        if CONTROL.search(line[:-2].decode("latin-1")):
            raise BadRequest("a chunk line contains a control character")
        return line

    async def _forward_response(self, state: AgentState, exchange: Exchange, upstream: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, redactor: Redactor) -> None:
        raw = await asyncio.wait_for(read_head(upstream), IDLE_TIMEOUT)
        status, headers, status_line = parse_status_head(raw)
        exchange.status = status
        # The broker closes the agent's connection after each response, so it sends Connection: close.
        forwarded = [(name, value) for name, value in headers
                     if name.lower() not in HOP_BY_HOP or name.lower() == "transfer-encoding"]
        forwarded.append(("Connection", "close"))
        # The head is masked on its own: it is complete, so nothing needs to be held back for the body.
        head_redactor = Redactor(redactor.secrets)
        masked_head = head_redactor.feed(render_head(status_line, forwarded)) + head_redactor.flush()
        await self._send(state, exchange, writer, masked_head, outbound=False)
        # The body passes through as it arrives, so server-sent events stream; the upstream closes at its end.
        await self._pipe(state, exchange, upstream, writer, outbound=False, redactor=redactor)


def _leaves_base_path(path: str) -> bool:
    """Return True when a path could reach outside the API's base path once the upstream decodes or normalizes it.

    The upstream receives the base path and this path joined: a `..` segment, or an encoded slash or dot, would
    let an agent reach other routes of the upstream host with the key the broker adds.
    """
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered or "\\" in path:
        return True
    return any(segment in (".", "..") for segment in path.partition("?")[0].split("/"))
