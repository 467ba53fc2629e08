"""The control socket's framing and request checks, and the detach key detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.control_protocol import (
    HELLO,
    INPUT,
    MAX_PAYLOAD,
    STDOUT,
    FrameBuffer,
    ProtocolError,
    Request,
    bind_address,
    decode_json,
    encode,
    parse_request,
)
from orchestrator.terminal import DetachDetector


def test_frame_buffer_joins_split_frames() -> None:
    data = encode(INPUT, b"abc") + encode(STDOUT, b"") + encode(INPUT, b"xyz")
    buffer = FrameBuffer()
    frames = []
    for index in range(len(data)):
        frames.extend(buffer.feed(data[index:index + 1]))
    assert frames == [(INPUT, b"abc"), (STDOUT, b""), (INPUT, b"xyz")]


def test_frame_buffer_rejects_oversized_frame() -> None:
    header = b"I" + (MAX_PAYLOAD + 1).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="over the limit"):
        FrameBuffer().feed(header)


def test_encode_rejects_oversized_payload() -> None:
    with pytest.raises(ProtocolError):
        encode(INPUT, b"x" * (MAX_PAYLOAD + 1))


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_decode_json_requires_an_object(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_json(HELLO, payload)


def test_request_round_trips() -> None:
    request = Request(action="exec", agent="worker", command=("ls", "-l"), tty=True, rows=24, cols=80)
    assert parse_request(request.to_json()) == request


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "unsupported protocol version"),
        ({"action": "shell"}, "unknown action"),
        ({"agent": ""}, "names no agent"),
        ({"command": "ls -l"}, "list of strings"),
        ({"command": ["a\x00b"]}, "without NUL"),
        ({"command": []}, "exec needs a command"),
        ({"tty": "yes"}, "tty must be"),
        ({"rows": 0}, "rows must be"),
        ({"cols": True}, "cols must be"),
    ],
)
def test_request_rejects_bad_field(change: dict[str, object], message: str) -> None:
    document = {**Request("exec", "worker", ("true",), False, None, None).to_json(), **change}
    with pytest.raises(ProtocolError, match=message):
        parse_request(document)


def test_bind_address_shortens_deep_paths(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    deep.mkdir()
    address, folder = bind_address(deep / "orchestrate.sock")
    try:
        assert folder is not None
        assert address == f"/proc/self/fd/{folder}/orchestrate.sock"
    finally:
        if folder is not None:
            import os

            os.close(folder)
    short, none = bind_address(Path("/tmp/s.sock"))
    assert (short, none) == ("/tmp/s.sock", None)


def test_detach_sequence_detected_across_reads() -> None:
    detector = DetachDetector()
    assert detector.feed(b"ab\x10") == (b"ab", False)
    assert detector.feed(b"\x11ignored") == (b"", True)


def test_broken_detach_sequence_passes_keys_on() -> None:
    detector = DetachDetector()
    assert detector.feed(b"\x10x") == (b"\x10x", False)
    assert detector.feed(b"\x10\x10\x11") == (b"\x10", True)


def test_ctrl_c_is_forwarded_as_a_byte() -> None:
    assert DetachDetector().feed(b"\x03") == (b"\x03", False)


def test_deeply_nested_json_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_json(HELLO, b"[" * 32_000 + b"]" * 32_000)
