"""The client relay on a socket pair: what it sends for typed input and how each kind of end is reported."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.control_client import Opened, Relay, SessionError, run_socket
from orchestrator.control_protocol import (
    CLOSE_INPUT,
    ERROR,
    EXIT,
    INPUT,
    STDERR,
    STDOUT,
    FrameBuffer,
    encode,
    encode_json,
)
from orchestrator.errors import EnvironmentProblem


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    with client, server:
        yield client, server


def received_frames(server: socket.socket) -> list[tuple[bytes, bytes]]:
    server.settimeout(5)
    buffer = FrameBuffer()
    frames = []
    while chunk := server.recv(65536):
        frames.extend(buffer.feed(chunk))
    return frames


def test_output_and_exit_code(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.sendall(encode(STDOUT, b"out") + encode(STDERR, b"err") + encode_json(EXIT, {"exit_code": 4}))
    output, errors = io.BytesIO(), io.BytesIO()
    end = Relay(client, input_fd=None, output=output, errors=errors).run(Opened({}, FrameBuffer(), []))
    assert end.exit_code == 4
    assert not end.detached
    assert output.getvalue() == b"out"
    assert errors.getvalue() == b"err"


def test_frames_behind_acceptance_are_shown(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _server = pair
    output = io.BytesIO()
    pending = [(STDOUT, b"first prompt$ "), (EXIT, b'{"exit_code": 0}')]
    end = Relay(client, input_fd=None, output=output, errors=io.BytesIO()).run(Opened({}, FrameBuffer(), pending))
    assert end.exit_code == 0
    assert output.getvalue() == b"first prompt$ "


def test_error_frame_raises(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.sendall(encode_json(ERROR, {"error": "agent stopped", "exit_code": 2}))
    with pytest.raises(SessionError, match="agent stopped") as raised:
        Relay(client, input_fd=None, output=io.BytesIO(), errors=io.BytesIO()).run(Opened({}, FrameBuffer(), []))
    assert raised.value.exit_code == 2


def test_closed_run_ends_without_code(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.shutdown(socket.SHUT_WR)
    end = Relay(client, input_fd=None, output=io.BytesIO(), errors=io.BytesIO()).run(Opened({}, FrameBuffer(), []))
    assert end.exit_code is None
    assert not end.detached


def test_end_of_input_is_sent_once(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    read_end, write_end = os.pipe()
    os.write(write_end, b"line\n")
    os.close(write_end)
    relay = Relay(client, input_fd=read_end, output=io.BytesIO(), errors=io.BytesIO())
    ending = threading.Timer(1.0, lambda: server.sendall(encode_json(EXIT, {"exit_code": 0})))
    ending.start()
    try:
        assert relay.run(Opened({}, FrameBuffer(), [])).exit_code == 0
    finally:
        ending.cancel()
        os.close(read_end)
    client.shutdown(socket.SHUT_WR)
    assert received_frames(server) == [(INPUT, b"line\n"), (CLOSE_INPUT, b"")]


def test_detach_keys_end_relay_unsent(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    read_end, write_end = os.pipe()
    os.write(write_end, b"ls\r\x10\x11after")
    try:
        end = Relay(client, input_fd=read_end, output=io.BytesIO(), errors=io.BytesIO(),
                    detach=True).run(Opened({}, FrameBuffer(), []))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert end.detached
    client.shutdown(socket.SHUT_WR)
    assert received_frames(server) == [(INPUT, b"ls\r")]


def bind_short(listener: socket.socket, path: Path) -> None:
    """Bind to `path` through its folder's descriptor, since a pytest folder is longer than sun_path allows."""
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        listener.bind(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)


def test_run_socket_checks_owner_and_modes(tmp_path: Path) -> None:
    run_dir = tmp_path / "r-20261205-000000-abcdef"
    folder = run_dir / "control"
    folder.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX) as listener:
        bind_short(listener, folder / "orchestrate.sock")
        assert run_socket(tmp_path, run_dir.name) == folder / "orchestrate.sock"

        folder.chmod(0o777)
        with pytest.raises(EnvironmentProblem, match="has mode 777, not 700"):
            run_socket(tmp_path, run_dir.name)
        folder.chmod(0o700)

        if os.getuid() == 0:
            os.chown(folder, 65534, 65534)
            with pytest.raises(EnvironmentProblem, match="belongs to uid 0, its folder to uid 65534"):
                run_socket(tmp_path, run_dir.name)
            os.chown(folder, 0, 0)


def test_run_socket_rejects_linked_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "r-20261205-000000-abcdef"
    run_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (run_dir / "control").symlink_to(elsewhere)
    with socket.socket(socket.AF_UNIX) as listener:
        bind_short(listener, elsewhere / "orchestrate.sock")
        with pytest.raises(EnvironmentProblem, match="is not a folder"):
            run_socket(tmp_path, run_dir.name)
