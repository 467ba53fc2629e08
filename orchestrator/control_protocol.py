"""The framing of the control socket between `orchestrate exec` or `attach` and the run process.

A frame is one type byte, a 4-byte big-endian payload length, then the payload.
The client opens with one HELLO frame that carries a JSON request, then sends
INPUT bytes, RESIZE requests and at most one CLOSE_INPUT. The run process
replies with ACCEPTED or ERROR, then STDOUT and STDERR bytes, and ends with one
EXIT frame. Payloads of HELLO, RESIZE, ACCEPTED, ERROR and EXIT are JSON objects.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1

HELLO = b"H"
INPUT = b"I"
CLOSE_INPUT = b"C"
RESIZE = b"R"
ACCEPTED = b"A"
STDOUT = b"O"
STDERR = b"E"
EXIT = b"X"
ERROR = b"F"

CLIENT_TYPES = frozenset({HELLO, INPUT, CLOSE_INPUT, RESIZE})
HEADER = struct.Struct(">cI")
# Bounds a frame, so a broken or hostile client cannot make the run process allocate without limit.
MAX_PAYLOAD = 1024 * 1024
MAX_JSON_PAYLOAD = 64 * 1024

SOCKET_FOLDER = "control"
SOCKET_NAME = "orchestrate.sock"
# sun_path has room for 108 bytes, less than a deep run folder needs. So a long path is named through an open
# descriptor of its folder, /proc/self/fd/<fd>/orchestrate.sock, which stays short wherever the folder is.
SHORT_PATH_LIMIT = 100


class ProtocolError(Exception):
    """A frame broke the control protocol: unknown type, oversized, or a JSON payload that is not an object."""


def socket_path(run_dir: Path) -> Path:
    """Return where a run's control socket lives."""
    return run_dir / SOCKET_FOLDER / SOCKET_NAME


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, document: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(document, sort_keys=True).encode("utf-8"))


def parse_header(header: bytes) -> tuple[bytes, int]:
    kind, length = HEADER.unpack(header)
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of type {kind!r} announces {length} bytes, over the limit of {MAX_PAYLOAD}")
    return bytes(kind), int(length)


def decode_json(kind: bytes, payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_JSON_PAYLOAD:
        raise ProtocolError(f"the {kind!r} frame's JSON is {len(payload)} bytes, over the limit of {MAX_JSON_PAYLOAD}")
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the {kind!r} frame does not contain JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError(f"the {kind!r} frame's JSON is nested too deeply") from exc
    if not isinstance(document, dict):
        raise ProtocolError(f"the {kind!r} frame's JSON is a {type(document).__name__}, not an object")
    return document


class FrameBuffer:
    """Bytes received so far, cut into whole frames as they complete."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._data.extend(data)
        frames = []
        while len(self._data) >= HEADER.size:
            kind, length = parse_header(bytes(self._data[: HEADER.size]))
            end = HEADER.size + length
            if len(self._data) < end:
                break
            frames.append((kind, bytes(self._data[HEADER.size:end])))
            del self._data[:end]
        return frames


@dataclass(frozen=True)
class Request:
    """A client's HELLO: run a command (`exec`) or join an interactive agent's terminal (`attach`)."""

    action: str
    agent: str
    command: tuple[str, ...]
    tty: bool
    rows: int | None
    cols: int | None

    def to_json(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "action": self.action, "agent": self.agent,
                "command": list(self.command), "tty": self.tty, "rows": self.rows, "cols": self.cols}


def parse_request(document: dict[str, Any]) -> Request:
    """Validate a HELLO document; raise ProtocolError naming the first bad field."""
    if document.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {document.get('version')!r}; use the same orchestrate "
                            "for the run and for this command")
    action = document.get("action")
    if action not in ("exec", "attach"):
        raise ProtocolError(f"unknown action {action!r}; expected 'exec' or 'attach'")
    agent = document.get("agent")
    if not isinstance(agent, str) or not agent:
        raise ProtocolError("the request names no agent")
    command = document.get("command", [])
    if not isinstance(command, list) or not all(isinstance(word, str) and "\x00" not in word for word in command):
        raise ProtocolError("command must be a list of strings without NUL characters")
    if action == "exec" and not command:
        raise ProtocolError("exec needs a command")
    tty = document.get("tty", False)
    if not isinstance(tty, bool):
        raise ProtocolError("tty must be true or false")
    rows, cols = parse_size(document)
    return Request(action=action, agent=agent, command=tuple(command), tty=tty, rows=rows, cols=cols)


def parse_size(document: dict[str, Any]) -> tuple[int | None, int | None]:
    """Return a terminal size in rows and columns, each from 1 to 10000, or None where it is absent."""
    sizes = []
    for key in ("rows", "cols"):
        value = document.get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= 10_000):
            raise ProtocolError(f"{key} must be a whole number from 1 to 10000, not {value!r}")
        sizes.append(value)
    return sizes[0], sizes[1]


def bind_address(path: Path) -> tuple[str, int | None]:
    """Return a name for `path` that fits sun_path, and the descriptor to close once it is used (if any)."""
    if len(os.fsencode(path)) <= SHORT_PATH_LIMIT:
        return str(path), None
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{folder}/{path.name}", folder


def peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """Return the pid, uid and gid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid
