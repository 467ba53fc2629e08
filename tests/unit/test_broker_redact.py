"""Unit tests of masking a reflected API key in the stream the agent receives."""

from __future__ import annotations

import pytest

from orchestrator.broker.redact import Redactor

SECRET = "sk-test-secret-0123456789"


def masked(pieces: list[bytes]) -> bytes:
    redactor = Redactor([SECRET])
    return b"".join(redactor.feed(piece) for piece in pieces) + redactor.flush()


def test_whole_secret_masked() -> None:
    out = masked([b"key=" + SECRET.encode() + b";"])

    assert out == b"key=" + b"*" * len(SECRET) + b";"


@pytest.mark.parametrize("split", [1, 5, len(SECRET) - 1])
def test_secret_split_across_reads_masked(split: int) -> None:
    data = b"echo: " + SECRET.encode() + b"\n"
    cut = len(b"echo: ") + split

    out = masked([data[:cut], data[cut:]])

    assert SECRET.encode() not in out
    assert len(out) == len(data)


def test_unrelated_tail_not_held() -> None:
    redactor = Redactor([SECRET])

    # An event ending in a blank line must reach the agent at once, or streaming stalls.
    assert redactor.feed(b"data: one\n\n") == b"data: one\n\n"


def test_prefix_held_then_released() -> None:
    redactor = Redactor([SECRET])

    first = redactor.feed(b"data sk-te")
    rest = redactor.flush()

    assert first == b"data "
    assert rest == b"sk-te"
