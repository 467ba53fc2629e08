"""The terminal filter against hostile output: what must not reach the user's terminal, and what must."""

from __future__ import annotations

import io

import pytest

from orchestrator.control_client import Opened, Relay
from orchestrator.control_protocol import EXIT, STDOUT, FrameBuffer, encode, encode_json
from orchestrator.terminal_filter import MODE_RESET, TerminalFilter


def filtered(*chunks: bytes) -> bytes:
    terminal_filter = TerminalFilter()
    return b"".join(terminal_filter.feed(chunk) for chunk in chunks)


def every_split(data: bytes) -> list[bytes]:
    """Return the filter's output for `data` cut into two chunks at each position and into single bytes."""
    outputs = [filtered(data[:cut], data[cut:]) for cut in range(len(data) + 1)]
    outputs.append(filtered(*(bytes([byte]) for byte in data)))
    return outputs


HOSTILE = [
    pytest.param(b"\x1b]52;c;cm0gLXJmIH4K\x07", id="osc52-bel"),
    pytest.param(b"\x1b]52;c;cm0gLXJmIH4K\x1b\\", id="osc52-st"),
    pytest.param(b"\x1b]52;p;?\x07", id="osc52-read"),
    pytest.param(b"\xc2\x9d52;c;cm0gLXJmIH4K\x07", id="osc52-c1-utf8"),
    pytest.param(b"\x9d52;c;cm0gLXJmIH4K\x07", id="osc52-c1-raw"),
    pytest.param(b"\x1b]1337;File=name=eA==;inline=0:aGk=\x07", id="iterm-file"),
    pytest.param(b"\x1b]5113;ac=send\x1b\\", id="kitty-file-transfer"),
    pytest.param(b"\x1b_Ga=T,t=f;L2V0Yy9wYXNzd2Q=\x1b\\", id="kitty-graphics-file"),
    pytest.param(b"\x1bPtmux;\x1b\x1b]52;c;cm0K\x07\x1b\\", id="tmux-passthrough"),
    pytest.param(b"\x1bP$qm\x1b\\", id="decrqss"),
    pytest.param(b"\x1b[21t", id="title-report"),
    pytest.param(b"\x1b[3;0;0t", id="window-move"),
    pytest.param(b"\x1b[5i", id="media-copy"),
    pytest.param(b"\x1b]50;?\x07", id="font-query"),
    pytest.param(b"\x1b]777;notify;a;b\x07", id="notify"),
    pytest.param(b"\x1b%@", id="leave-utf8"),
    pytest.param(b"\x1b[1;1;1;1;2;2*y", id="screen-checksum"),
]


@pytest.mark.parametrize("sequence", HOSTILE)
def test_hostile_sequence_dropped(sequence: bytes) -> None:
    data = b"before" + sequence + b"after"
    for output in every_split(data):
        assert b"\x1b]52" not in output
        assert b"\x1b_" not in output
        assert b"\x1bP" not in output
        assert b"\x9d" not in output
        assert output.startswith(b"before")
        assert output.endswith(b"after")
        assert b"\x1b" not in output


def test_osc_payload_cannot_smuggle_controls() -> None:
    output = filtered(b"\x1b]0;ti\x9d52;c;x\x07")
    assert output == b"\x1b]0;ti52;c;x\x1b\\"


@pytest.mark.parametrize("malformed", [b"\xe0\x80\x9d", b"\xf0\x80\x80\x9d", b"\xed\xa0\x9d"])
def test_malformed_utf8_carries_no_c1(malformed: bytes) -> None:
    output = filtered(malformed + b"\x9d52;c;eA==\x07")
    assert b"\x9d" not in output


def test_osc_too_long_dropped() -> None:
    output = filtered(b"\x1b]0;" + b"a" * 10_000 + b"\x07tail")
    assert output == b"tail"


@pytest.mark.parametrize("sequence", [
    b"\x1b[31mred\x1b[0m",
    b"\x1b[?1049h\x1b[2J\x1b[H",
    b"\x1b[?2004h",
    b"\x1b[?1006h",
    b"\x1b[22;0t\x1b[23;0t",
    b"\x1b(0qq\x1b(B",
    b"\x1b7\x1b8\x1bM",
    "caf\u00e9 \u015c \u2500 \u209d \U0001f600".encode(),
    b"\r\n\t\x08\x07",
])
def test_drawing_passes_unchanged(sequence: bytes) -> None:
    for output in every_split(sequence):
        assert output == sequence


@pytest.mark.parametrize("sequence", [b"\x1b]0;title\x1b\\", b"\x1b]8;;https://example.invalid/\x1b\\link"])
def test_allowed_osc_passes(sequence: bytes) -> None:
    for output in every_split(sequence):
        assert output == sequence


def test_title_ended_by_bel_is_rebuilt_with_st() -> None:
    assert filtered(b"\x1b]2;caf\xc3\xa9\x07") == "\x1b]2;caf\u00e9\x1b\\".encode()


def test_alternate_screen_left_on_is_turned_off() -> None:
    terminal_filter = TerminalFilter()
    terminal_filter.feed(b"\x1b[?1049h")
    assert terminal_filter.reset_sequence().startswith(b"\x1b[?1049l")
    terminal_filter.feed(b"\x1b[?1049l")
    assert terminal_filter.reset_sequence() == MODE_RESET


class FakeTerminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_relay_filters_a_terminal() -> None:
    import socket

    client, server = socket.socketpair()
    with client, server:
        server.sendall(encode(STDOUT, b"a\x1b]52;c;eA==") + encode(STDOUT, b"\x07b\x1b[?1000h")
                       + encode_json(EXIT, {"exit_code": 0}))
        terminal = FakeTerminal()
        Relay(client, input_fd=None, output=terminal, errors=FakeTerminal()).run(Opened({}, FrameBuffer(), []))
    assert terminal.getvalue() == b"ab\x1b[?1000h" + MODE_RESET


def test_relay_passes_a_pipe_exactly() -> None:
    import socket

    client, server = socket.socketpair()
    with client, server:
        server.sendall(encode(STDOUT, b"a\x1b]52;c;eA==\x07b") + encode_json(EXIT, {"exit_code": 0}))
        pipe = io.BytesIO()
        Relay(client, input_fd=None, output=pipe, errors=io.BytesIO()).run(Opened({}, FrameBuffer(), []))
    assert pipe.getvalue() == b"a\x1b]52;c;eA==\x07b"
