"""A DNS responder that refuses every query, on the broker's address in each agent's network.

Agents use Docker's embedded resolver, which forwards names it does not know
to the servers of the container's `dns` setting: the broker's address. The
refusal ends the lookup at once, where a silent port would make every lookup
wait for the resolver's timeout. No query is forwarded anywhere, so a name
cannot carry data off the machine.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, cast

Emit = Callable[[dict[str, Any]], None]

DNS_PORT = 53
RCODE_REFUSED = 5
# Queries of one agent reported one by one; later ones are only counted.
MAX_REPORTED_QUERIES = 100


def refusal(query: bytes) -> bytes | None:
    """Return a REFUSED answer to `query` that repeats its question, or None when it is not a DNS query."""
    if len(query) < 12:
        return None
    ident, flags, question_count = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:
        return None  # An answer, not a query.
    end = _question_end(query) if question_count == 1 else None
    question = query[12:end] if end is not None else b""
    # QR set, the opcode and RD copied, RCODE REFUSED.
    answer_flags = 0x8000 | (flags & 0x7900) | RCODE_REFUSED
    return struct.pack("!HHHHHH", ident, answer_flags, 1 if question else 0, 0, 0, 0) + question


def query_name(query: bytes) -> str:
    """Return the first question's name, printable characters only, or "" when it cannot be read."""
    labels: list[str] = []
    offset = 12
    while offset < len(query) and len(labels) < 128:
        length = query[offset]
        if length == 0 or length & 0xC0:
            break
        labels.append(query[offset + 1:offset + 1 + length].decode("ascii", errors="replace"))
        offset += 1 + length
    name = ".".join(labels)
    return "".join(char if char.isprintable() else "?" for char in name)[:255]


def _question_end(query: bytes) -> int | None:
    offset = 12
    while offset < len(query):
        length = query[offset]
        if length == 0:
            end = offset + 1 + 4
            return end if end <= len(query) else None
        if length & 0xC0:
            return None
        offset += 1 + length
    return None


class RefusingResolver(asyncio.DatagramProtocol):
    def __init__(self, agent: str, emit: Emit) -> None:
        self.agent = agent
        self._emit = emit
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        answer = refusal(data)
        if answer is None or self._transport is None:
            return
        self.queries += 1
        if self.queries <= MAX_REPORTED_QUERIES:
            self._emit({"event": "dns", "agent": self.agent, "name": query_name(data), "answer": "refused"})
        self._transport.sendto(answer, addr)


async def serve_dns(agent: str, address: str, emit: Emit) -> asyncio.DatagramTransport | None:
    """Listen for one agent's DNS queries; return None (and report it) when port 53 cannot be bound."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: RefusingResolver(agent, emit), local_addr=(address, DNS_PORT)
        )
    except OSError as exc:
        # Lookups then wait for the resolver's timeout instead of failing at once; nothing leaks either way.
        emit({"event": "warning", "message": f"DNS refusals for agent {agent} are off: {exc}"})
        return None
    return transport
