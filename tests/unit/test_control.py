"""The control server alone: its socket's modes and lifetime, and what it does with bad requests."""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from orchestrator.control import ControlServer
from orchestrator.control_protocol import ERROR, EXIT, HELLO, FrameBuffer, Request, encode, encode_json
from orchestrator.errors import EnvironmentProblem
from orchestrator.relay import ClientChannel, Peer
from orchestrator.sessions import SessionHost, SessionRefused


class RecordingSessions:
    """A stand-in for SessionHost that records requests and ends each exec with exit code 0."""

    def __init__(self) -> None:
        self.requests: list[tuple[Request, Peer]] = []

    async def run_exec(self, request: Request, channel: ClientChannel, peer: Peer) -> None:
        if request.agent == "ghost":
            raise SessionRefused("run has no agent ghost", exit_code=2)
        self.requests.append((request, peer))
        await channel.send(encode_json(EXIT, {"exit_code": 0}))

    async def attach(self, request: Request, channel: ClientChannel, peer: Peer) -> None:
        raise AssertionError("no attach expected")


def exchange(path: Path, data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
    """Send `data` to the socket and return the JSON frames of the reply, until the server closes."""
    frames: list[tuple[bytes, dict[str, Any]]] = []
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(path))
        connection.sendall(data)
        buffer = FrameBuffer()
        while chunk := connection.recv(65536):
            frames.extend((kind, json.loads(payload)) for kind, payload in buffer.feed(chunk))
    return frames


def serve_and(run_dir: Path, act: Any, audit: list[tuple[str, dict[str, Any]]]) -> RecordingSessions:
    sessions = RecordingSessions()
    server = ControlServer(run_dir, cast(SessionHost, sessions),
                           audit=lambda kind, **fields: audit.append((kind, fields)))

    async def main() -> None:
        await server.open()
        async with anyio.create_task_group() as group:
            await group.start(server.serve)
            await anyio.to_thread.run_sync(act, server.path)
            group.cancel_scope.cancel()

    anyio.run(main)
    return sessions


def test_socket_is_private_and_removed(tmp_path: Path) -> None:
    modes: dict[str, int] = {}

    def look(path: Path) -> None:
        modes["socket"] = stat.S_IMODE(path.stat().st_mode)
        modes["folder"] = stat.S_IMODE(path.parent.stat().st_mode)

    serve_and(tmp_path, look, [])
    assert modes == {"socket": 0o600, "folder": 0o700}
    assert not (tmp_path / "control").exists()


def test_bad_requests_get_errors_and_serving_goes_on(tmp_path: Path) -> None:
    audit: list[tuple[str, dict[str, Any]]] = []
    replies: list[list[tuple[bytes, dict[str, Any]]]] = []
    valid = Request("exec", "worker", ("true",), False, None, None)

    def send_all(path: Path) -> None:
        replies.append(exchange(path, encode(b"Z", b"{}")))
        replies.append(exchange(path, encode(HELLO, b"[]")))
        replies.append(exchange(path, encode_json(HELLO, {**valid.to_json(), "agent": "ghost"})))
        replies.append(exchange(path, encode_json(HELLO, valid.to_json())))

    sessions = serve_and(tmp_path, send_all, audit)
    assert [kind for kind, _document in replies[0]] == [ERROR]
    assert "the first frame must be a request" in replies[0][0][1]["error"]
    assert "not an object" in replies[1][0][1]["error"]
    assert replies[2] == [(ERROR, {"error": "run has no agent ghost", "exit_code": 2})]
    assert replies[3] == [(EXIT, {"exit_code": 0})]
    assert [request for request, _peer in sessions.requests] == [valid]
    assert [kind for kind, _fields in audit] == ["control-error", "control-error"]


def test_unusable_control_folder_is_environment_problem(tmp_path: Path) -> None:
    (tmp_path / "control").write_text("a file where the folder goes\n", encoding="utf-8")
    server = ControlServer(tmp_path, cast(SessionHost, RecordingSessions()), audit=lambda kind, **fields: None)

    with pytest.raises(EnvironmentProblem, match="cannot create the run's control socket"):
        anyio.run(server.open)


def test_connections_over_limit_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.control.MAX_CONNECTIONS", 2)
    replies: list[list[tuple[bytes, dict[str, Any]]]] = []
    valid = Request("exec", "worker", ("true",), False, None, None)

    def flood(path: Path) -> None:
        idle = []
        for _ in range(2):
            connection = socket.socket(socket.AF_UNIX)
            connection.connect(str(path))
            idle.append(connection)
        time.sleep(0.2)
        replies.append(exchange(path, encode_json(HELLO, valid.to_json())))
        for connection in idle:
            connection.close()
        time.sleep(0.2)
        replies.append(exchange(path, encode_json(HELLO, valid.to_json())))

    serve_and(tmp_path, flood, [])
    assert replies[0][0][0] == ERROR
    assert "at most 2 control connections" in replies[0][0][1]["error"]
    assert replies[1] == [(EXIT, {"exit_code": 0})]


def test_descriptor_exhaustion_keeps_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.control.ACCEPT_RETRY_SECONDS", 0.05)
    replies: list[list[tuple[bytes, dict[str, Any]]]] = []
    valid = Request("exec", "worker", ("true",), False, None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def exhaust(path: Path) -> None:
        held: list[socket.socket] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        try:
            while True:
                try:
                    connection = socket.socket(socket.AF_UNIX)
                except OSError:
                    break
                held.append(connection)
                connection.connect(str(path))
            # One descriptor freed for one more client leaves none for the server's accept.
            held.pop().close()
            last = socket.socket(socket.AF_UNIX)
            held.append(last)
            last.connect(str(path))
            time.sleep(0.3)
        finally:
            for connection in held:
                connection.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        time.sleep(0.3)
        replies.append(exchange(path, encode_json(HELLO, valid.to_json())))

    serve_and(tmp_path, exhaust, [])
    assert replies == [[(EXIT, {"exit_code": 0})]]


def test_planted_control_link_rejected(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "control").symlink_to(elsewhere)
    server = ControlServer(run_dir, cast(SessionHost, RecordingSessions()), audit=lambda kind, **fields: None)

    with pytest.raises(EnvironmentProblem, match="already exists"):
        anyio.run(server.open)
    assert list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


def test_repeated_rejections_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.control.foreign_namespace_reason", lambda pid, uid: "a test peer")
    monkeypatch.setattr("orchestrator.control.REJECTIONS_IN_FULL", 2)
    monkeypatch.setattr("orchestrator.control.REJECTION_SAMPLE", 3)
    audit: list[tuple[str, dict[str, Any]]] = []
    replies: list[list[tuple[bytes, dict[str, Any]]]] = []
    valid = Request("exec", "worker", ("true",), False, None, None)

    def reconnect(path: Path) -> None:
        for _ in range(7):
            replies.append(exchange(path, encode_json(HELLO, valid.to_json())))

    sessions = serve_and(tmp_path, reconnect, audit)
    assert all(reply[0][0] == ERROR and "a test peer" in reply[0][1]["error"] for reply in replies)
    assert [fields["rejections"] for kind, fields in audit if kind == "control-rejected"] == [1, 2, 3, 6]
    assert sessions.requests == []
