"""The small part of HTTP/1.1 the broker speaks: request heads, body framing and plain responses."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
# Headers that belong to one connection and never pass through a proxy (RFC 9110, section 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
})
# Headers that carry credentials in the APIs the profiles name; the broker drops what an agent sends.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"})
# Not passed on: the broker sends the body without waiting, so an interim 100 Continue would only be relayed
# as if it were the response.
HELD_BACK_HEADERS = frozenset({"expect"})
REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


# Every C0 control character but the tab, and DEL.
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


class BadRequest(Exception):
    """The client sent something that is not a valid HTTP/1.x request head."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read up to the blank line that ends a message head; raise BadRequest when it is too long or cut."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(f"the message head is longer than {MAX_HEAD_BYTES} bytes") from None
    except asyncio.IncompleteReadError:
        raise BadRequest("the connection closed before the message head ended") from None


def parse_request_head(raw: bytes) -> RequestHead:
    text = raw.decode("latin-1")
    # Some upstream servers end a line at a bare LF or CR, or a string at a NUL, where this parser does not.
    # Passed on, such a character would let an agent add headers or a second request to the upstream's input.
    if CONTROL.search(text[:-4].replace("\r\n", "")):
        raise BadRequest("the request head contains a control character other than CRLF line ends")
    lines = text.split("\r\n")
    if "\t" in lines[0]:
        raise BadRequest("the request line contains a tab")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("the request line is not METHOD TARGET HTTP/1.x")
    method, target, version = parts
    return RequestHead(method=method.upper(), target=target, version=version, headers=_header_lines(lines[1:]))


def parse_status_head(raw: bytes) -> tuple[int, list[tuple[str, str]], str]:
    """Return the status code, the headers and the status line of a response head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadRequest("the upstream response does not start with a status line")
    return int(parts[1]), _header_lines(lines[1:]), lines[0]


def _header_lines(lines: list[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if not line:
            continue
        name, separator, value = line.partition(":")
        # A name with spaces or a line folded onto the previous one is how request smuggling starts.
        if not separator or not name or name != name.strip() or " " in name or "\t" in name:
            raise BadRequest(f"invalid header line {line[:60]!r}")
        headers.append((name, value.strip()))
    return headers


def render_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first_line, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def plain_response(status: int, message: str) -> bytes:
    body = (message + "\n").encode("utf-8")
    head = render_head(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), ("Connection", "close"),
    ])
    return head + body


def body_framing(head: RequestHead) -> tuple[str, int]:
    """Return ("length", n), ("chunked", 0) or ("none", 0) for a request's body."""
    # A repeated framing header, even with equal values, lets the broker and the upstream pick different copies.
    for name in ("transfer-encoding", "content-length"):
        if sum(1 for key, _ in head.headers if key.lower() == name) > 1:
            raise BadRequest(f"the request has more than one {name} header")
    encoding = head.header("transfer-encoding")
    length = head.header("content-length")
    if encoding is not None:
        # Both headers at once, or another coding, can make the broker and the upstream disagree on the end.
        if encoding.strip().lower() != "chunked" or length is not None:
            raise BadRequest("only Transfer-Encoding: chunked without Content-Length is supported")
        return "chunked", 0
    if length is not None:
        # str.isdigit also accepts digits such as "\xb2" that int() rejects.
        if not (length.isascii() and length.isdigit()):
            raise BadRequest(f"invalid Content-Length {length[:20]!r}")
        return "length", int(length)
    return "none", 0
