"""`orchestrate shell`, `run --attach`, `attach` and `exec`, driven through pseudo-terminals against real Docker."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pexpect
import pytest

from orchestrator.control_client import connect
from orchestrator.control_protocol import ERROR, HELLO, FrameBuffer, encode, socket_path

from .conftest import ORCHESTRATE, Project, _clean_environment, read_json

PROMPT = r"\$ "
CTRL_P_CTRL_Q = "\x10\x11"


def spawn(project: Project, *args: str, rows: int = 30, cols: int = 100) -> pexpect.spawn:
    return pexpect.spawn(
        ORCHESTRATE[0], [*ORCHESTRATE[1:], *args], cwd=str(project.root), env=_clean_environment(),
        timeout=60, encoding="utf-8", dimensions=(rows, cols),
    )


def run_id_from(child: pexpect.spawn) -> str:
    child.expect(r"run ((?:shell|t-[0-9a-f]+)-\d{8}-\d{6}-[0-9a-f]{6})")
    return str(child.match.group(1))


def audit_records(project: Project, run_id: str) -> list[dict[str, Any]]:
    lines = (project.runs / run_id / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def run_containers(client: docker.DockerClient, run_id: str) -> list[str]:
    return [item["Id"] for item in client.api.containers(all=True, filters={"label": f"orchestrate.run={run_id}"})]


def assert_terminal_restored(child: pexpect.spawn) -> None:
    """Check that the pseudo-terminal left raw mode: on Linux the master reports the terminal's settings."""
    local_flags = termios.tcgetattr(child.child_fd)[3]
    assert local_flags & termios.ICANON
    assert local_flags & termios.ECHO
    assert local_flags & termios.ISIG


@pytest.fixture
def shell_runs(project: Project) -> Iterator[list[str]]:
    """Run ids of the shells a test starts; their containers are removed by label if a test fails midway."""
    started: list[str] = []
    yield started
    for run_id in started:
        for container_id in run_containers(project.client, run_id):
            project.client.api.remove_container(container_id, force=True)


def test_shell_sandbox_ends_clean(project: Project, shell_runs: list[str]) -> None:
    (project.source / "notes.txt").write_text("source file\n", encoding="utf-8")
    child = spawn(project, "shell", "--source", "src", "--runs-dir", "runs")
    run_id = run_id_from(child)
    shell_runs.append(run_id)
    child.expect(PROMPT)
    # Raw while connected, so keys such as Ctrl-C reach the shell inside as bytes.
    assert not termios.tcgetattr(child.child_fd)[3] & termios.ICANON

    child.sendline('echo "uid=$(id -u)"')
    child.expect(r"uid=(\d+)")
    assert child.match.group(1) != "0"

    child.sendline("echo changed > /workspace/src/notes.txt; echo status=$?")
    child.expect(r"status=(\d+)")
    assert child.match.group(1) != "0"
    assert (project.source / "notes.txt").read_text(encoding="utf-8") == "source file\n"

    child.sendline("echo from-shell > /workspace/output/result.txt; echo status=$?")
    child.expect(r"status=(\d+)")
    assert child.match.group(1) == "0"

    # Window size: the first size comes from the user's terminal, a resize reaches the program inside.
    child.sendline('echo "size=$(stty size)"')
    child.expect(r"size=(\d+) (\d+)")
    assert child.match.groups() == ("30", "100")
    child.setwinsize(41, 132)
    time.sleep(0.5)
    child.sendline('echo "size=$(stty size)"')
    child.expect(r"size=(\d+) (\d+)")
    assert child.match.groups() == ("41", "132")

    # Ctrl-C is a byte for the terminal inside: it ends the sleep, not the sandbox.
    child.expect(PROMPT)
    child.sendline("sleep 30")
    time.sleep(0.5)
    started = time.monotonic()
    child.sendcontrol("c")
    child.expect(PROMPT)
    assert time.monotonic() - started < 5
    child.sendline('echo "alive=$((40 + 2))"')
    child.expect("alive=42")

    child.sendline("exit")
    child.expect(pexpect.EOF, timeout=60)
    assert_terminal_restored(child)
    child.close()
    assert child.exitstatus == 0

    assert run_containers(project.client, run_id) == []
    verify = project.orchestrate("audit", "verify", str(project.runs / run_id))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (project.root / "generated" / "result.txt").read_text(encoding="utf-8") == "from-shell\n"
    kinds = [record["kind"] for record in audit_records(project, run_id)]
    assert "session-start" in kinds
    assert "violation" not in kinds
    assert not socket_path(project.runs / run_id).exists()


def test_shell_exit_code_is_commands(project: Project, shell_runs: list[str]) -> None:
    child = spawn(project, "shell", "--source", "src", "--runs-dir", "runs", "--", "sh", "-c", "echo inside; exit 5")
    shell_runs.append(run_id_from(child))
    child.expect("inside")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5


def test_shell_takes_a_manifest_agent(project: Project, shell_runs: list[str]) -> None:
    manifest = project.manifest([
        {"name": "first", "command": ["true"]},
        {"name": "second", "command": ["true"], "resources": {"memory": "256m", "pids": 64}},
    ])
    # cgroup v1 names the limit pids/pids.max, v2 pids.max.
    limit = "$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null)"
    report = f'echo "agent=$ORCHESTRATE_AGENT pids={limit}"'
    child = spawn(project, "shell", "--manifest", str(manifest), "--agent", "second", "--runs-dir", "runs", "--",
                  "sh", "-c", report)
    run_id = run_id_from(child)
    shell_runs.append(run_id)
    child.expect(r"agent=(\S+) pids=(\d+)")
    assert child.match.groups() == ("second", "64")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    plan = read_json(project.runs / run_id / "plan.json")
    assert [agent["name"] for agent in plan["agents"]] == ["second"]


def test_stopped_shell_restores_terminal(project: Project, shell_runs: list[str]) -> None:
    child = spawn(project, "shell", "--source", "src", "--runs-dir", "runs")
    run_id = run_id_from(child)
    shell_runs.append(run_id)
    child.expect(PROMPT)

    stopped = project.orchestrate("stop", run_id, "--runs-dir", str(project.runs))
    assert stopped.returncode == 0, stopped.stderr
    child.expect(pexpect.EOF, timeout=60)
    assert_terminal_restored(child)
    child.close()
    assert child.exitstatus == 130
    assert run_containers(project.client, run_id) == []


def test_exec_audited_outside_exec_tampering(project: Project) -> None:
    manifest = project.manifest([{"name": "worker", "command": ["sleep", "60"]}])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    container = project.wait_for_running(1)[0]
    run_id = container.labels["orchestrate.run"]
    socket_file = socket_path(project.runs / run_id)
    deadline = time.monotonic() + 30
    while not socket_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    identity = project.orchestrate("exec", run_id, "worker", "--runs-dir", str(project.runs), "--", "id", "-u")
    assert identity.returncode == 0, identity.stderr
    assert identity.stdout.strip() not in ("", "0")
    status = project.orchestrate("exec", run_id, "worker", "--runs-dir", str(project.runs), "--",
                                 "grep", "-E", "^(CapEff|CapBnd|NoNewPrivs):", "/proc/self/status")
    fields = dict(line.split(":\t") for line in status.stdout.splitlines())
    assert fields == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}
    failing = project.orchestrate("exec", run_id, "worker", "--runs-dir", str(project.runs), "--",
                                  "sh", "-c", "echo to-stderr >&2; exit 4")
    assert failing.returncode == 4
    assert failing.stderr.strip() == "to-stderr"
    piped = subprocess.run([*ORCHESTRATE, "exec", run_id, "worker", "--runs-dir", str(project.runs), "--", "cat"],
                           input="through stdin\n", capture_output=True, text=True, timeout=60,
                           env=_clean_environment(), cwd=project.root, check=False)
    assert piped.stdout == "through stdin\n"
    unknown = project.orchestrate("exec", run_id, "nobody", "--runs-dir", str(project.runs), "--", "true")
    assert unknown.returncode == 2
    assert "its agents are: worker" in unknown.stderr

    # The socket is private: mode 0600 in a 0700 folder, and another user cannot connect.
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(socket_file.parent.stat().st_mode) == 0o700
    assert _connect_as(65534, socket_file) == "permission denied"
    # Each layer holds on its own: the socket's mode with the folder opened up, then the peer uid check.
    socket_file.parent.chmod(0o711)
    assert _connect_as(65534, socket_file) == "permission denied"
    socket_file.chmod(0o666)
    assert _connect_as(65534, socket_file) == "rejected by the run"
    socket_file.chmod(0o600)
    socket_file.parent.chmod(0o700)

    # Malformed frames get an error frame back, and the run goes on serving.
    assert "invalid request" in _send_raw(socket_file, b"Z" + b"\x00\x00\x00\x02{}")
    assert "invalid request" in _send_raw(socket_file, encode(HELLO, b"not json"))
    assert "invalid request" in _send_raw(socket_file, encode(HELLO, b'{"version": 1, "action": "rm -rf"}'))
    again = project.orchestrate("exec", run_id, "worker", "--runs-dir", str(project.runs), "--", "echo", "still-here")
    assert again.stdout.strip() == "still-here"
    assert run.poll() is None

    # A terminal exec whose client dies gets SIGHUP, as a closed terminal would give it.
    watcher = "trap 'echo hup > /workspace/output/hup.txt; exit' HUP; echo started; while :; do sleep 0.2; done"
    dropped = spawn(project, "exec", run_id, "worker", "--tty", "--runs-dir", str(project.runs), "--",
                    "sh", "-c", watcher)
    dropped.expect("started")
    dropped.kill(9)
    hang_up = project.runs / run_id / "agents" / "worker" / "hup.txt"
    deadline = time.monotonic() + 15
    while not hang_up.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hang_up.read_text(encoding="utf-8") == "hup\n"
    dropped.close()

    # An exec that orchestrate did not make is tampering, and stops the run.
    outside = project.client.api.exec_create(container.id, ["true"])
    project.client.api.exec_start(outside["Id"])
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 3, stderr

    records = audit_records(project, run_id)
    user_execs = [record for record in records if record["kind"] == "user-exec"]
    assert [record["command"] for record in user_execs] == [
        ["id", "-u"], ["grep", "-E", "^(CapEff|CapBnd|NoNewPrivs):", "/proc/self/status"],
        ["sh", "-c", "echo to-stderr >&2; exit 4"], ["cat"], ["echo", "still-here"], ["sh", "-c", watcher],
    ]
    assert all(record["who"]["uid"] == os.getuid() for record in user_execs)
    ends = [record["exit_code"] for record in records if record["kind"] == "user-exec-end"]
    assert ends == [0, 0, 4, 0, 0, 0]
    hung_up = [record["hung_up"] for record in records if record["kind"] == "user-exec-end"]
    assert hung_up == [False, False, False, False, False, True]
    tampering = [record for record in records if record.get("violation") == "tampering"]
    assert tampering, records
    assert {record["evidence"]["attributes"]["execID"] for record in tampering} == {outside["Id"]}
    assert [record["kind"] for record in records].count("control-error") == 3
    assert [record["kind"] for record in records].count("control-rejected") == 1


def _connect_as(uid: int, path: Path) -> str:
    """Try the control socket from a child process running as `uid`; return how far it got.

    The child opens the socket's folder while still root, so that it can reach the socket
    through a long pytest path. Every permission is checked after the switch to `uid`.
    """
    outcomes = {0: "accepted", 13: "permission denied", 14: "rejected by the run"}
    child = os.fork()
    if child == 0:
        code = 1
        try:
            folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as connection:
                connection.settimeout(10)
                connection.connect(f"/proc/self/fd/{folder}/{path.name}")
                try:
                    connection.sendall(encode(HELLO, b'{"version": 1, "action": "exec", "agent": "worker", '
                                                     b'"command": ["true"]}'))
                except BrokenPipeError:
                    pass  # A rejecting run replies at once and closes, and its reply is still there to read.
                answer = connection.recv(65536)
            code = 14 if answer[:1] == ERROR and b"another user" in answer else 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _pid, status = os.waitpid(child, 0)
    return outcomes.get(os.waitstatus_to_exitcode(status), "failed otherwise")


def _send_raw(path: Path, data: bytes) -> str:
    """Send bytes to a control socket and return the error message of its reply."""
    with connect(path) as connection:
        connection.settimeout(15)
        connection.sendall(data)
        buffer = FrameBuffer()
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return ""
            for kind, payload in buffer.feed(chunk):
                if kind == ERROR:
                    return str(json.loads(payload)["error"])


def test_detach_keeps_agent_running(project: Project) -> None:
    manifest = project.manifest([{
        "name": "asker", "interactive": True,
        "command": ["sh", "-c", "while read answer; do echo \"got $answer\"; done; echo bye"],
    }])
    first = spawn(project, "run", str(manifest), "--runs-dir", str(project.runs), "--attach", "asker")
    run_id = run_id_from(first)
    first.sendline("first")
    first.expect("got first")

    first.send(CTRL_P_CTRL_Q)
    first.expect("detached from agent asker")
    time.sleep(1)
    assert first.isalive()
    container = project.containers()[0]
    container.reload()
    assert container.status == "running"

    # A client that breaks the protocol while attached gets an error; the agent goes on.
    hello = encode(HELLO, b'{"version": 1, "action": "attach", "agent": "asker", "command": [], "tty": true}')
    assert "unexpected frame" in _send_raw(socket_path(project.runs / run_id), hello + encode(b"Q", b""))
    attach_other = spawn(project, "attach", run_id, "nobody", "--runs-dir", str(project.runs))
    attach_other.expect("its agents are: asker")
    attach_other.expect(pexpect.EOF)
    attach_other.close()
    assert attach_other.exitstatus == 2
    container.reload()
    assert container.status == "running"

    follower = subprocess.Popen([*ORCHESTRATE, "logs", run_id, "asker", "-f", "--runs-dir", str(project.runs)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_clean_environment())
    second = spawn(project, "attach", run_id, "asker", "--runs-dir", str(project.runs))
    second.sendline("second")
    second.expect("got second")
    second.sendcontrol("d")
    second.expect("bye")
    second.expect(pexpect.EOF)
    second.close()
    assert second.exitstatus == 0

    first.expect(pexpect.EOF)
    first.close()
    assert first.exitstatus == 0
    # `logs -f` followed the terminal and ended with the agent; `logs` after the run prints the saved copy.
    followed, _errors = follower.communicate(timeout=30)
    assert re.search(rb"got first.*got second.*bye", followed, re.DOTALL)
    saved = project.orchestrate("logs", run_id, "asker", "--runs-dir", str(project.runs))
    assert re.search(r"got first.*got second.*bye", saved.stdout, re.DOTALL)
    kinds = [record["kind"] for record in audit_records(project, run_id)]
    # The terminal of `run --attach`, the client that broke the protocol, and `orchestrate attach`.
    assert kinds.count("user-attach") == 3
    assert kinds.count("user-detach") == 3
    assert kinds.count("control-error") == 1
    assert "violation" not in kinds
    transcript = (project.runs / run_id / "agents" / "asker.terminal.log").read_text(encoding="utf-8")
    assert re.search(r"got first.*got second", transcript, re.DOTALL)
    assert read_json(project.runs / run_id / "result.json")["agents"][0]["state"] == "succeeded"


def test_killed_run_ends_interactive_agent(project: Project) -> None:
    # The terminal runs in an exec, outside the lifeline's wrapper: the lifeline must still end it.
    manifest = project.manifest([{
        "name": "stubborn", "interactive": True, "command": ["sh", "-c", "trap '' HUP TERM INT; sleep 600"],
    }])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--no-live")
    container = project.wait_for_running(1)[0]
    run_id = container.labels["orchestrate.run"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "session-start" not in (project.runs / run_id / "audit.jsonl").read_text():
        time.sleep(0.05)
    lingering = subprocess.Popen(
        [*ORCHESTRATE, "exec", run_id, "stubborn", "--runs-dir", str(project.runs), "--", "sh", "-c",
         "trap '' HUP TERM INT; echo started; sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_clean_environment(),
    )
    assert lingering.stdout is not None
    assert lingering.stdout.readline() == b"started\n"

    run.kill()
    run.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            break
        time.sleep(0.1)
    assert container.status == "exited"
    # The exec's client sees its session end, rather than hanging on a dead run.
    lingering.communicate(timeout=30)
    assert lingering.returncode != 0

    cleanup = project.orchestrate("cleanup", run_id, "--runs-dir", str(project.runs))
    assert cleanup.returncode == 0, cleanup.stderr
    # The killed process could not remove its control socket, so cleanup does.
    assert not (project.runs / run_id / "control").exists()


def test_run_attach_rejects_batch_agent(project: Project) -> None:
    manifest = project.manifest([{"name": "batch", "command": ["true"]}])
    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs), "--attach", "batch")
    assert completed.returncode == 2
    assert "the agent is not interactive; set `interactive: true`" in completed.stderr
    unknown = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs), "--attach", "ghost")
    assert unknown.returncode == 2
    assert "its agents are: batch" in unknown.stderr
    assert project.containers() == []


def test_outside_attach_is_tampering(project: Project) -> None:
    # Only the run process has an interactive agent's terminal, so an engine attach from outside is tampering.
    manifest = project.manifest([{"name": "chat", "interactive": True, "command": ["sleep", "60"]}])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--no-live")
    container = project.wait_for_running(1)[0]
    run_id = container.labels["orchestrate.run"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "session-start" not in (project.runs / run_id / "audit.jsonl").read_text():
        time.sleep(0.05)

    outside = project.client.api.attach_socket(container.id, params={"stdout": 1, "stream": 1})
    try:
        run.communicate(timeout=60)
    finally:
        outside.close()
    assert run.returncode == 3
    tampering = [record for record in audit_records(project, run_id) if record.get("violation") == "tampering"]
    assert [record["subject"] for record in tampering] == ["attach"]


def test_container_peer_rejected(project: Project) -> None:
    """A process inside a container that reaches the socket is rejected, even with an accepted uid.

    An agent of a run started by an ordinary user has that user's uid, and another run's socket can appear in a
    folder the agent sees. Here a root container stands in for it, since uid 0 passes the uid check too.
    """
    manifest = project.manifest([{"name": "worker", "command": ["sleep", "60"]}])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    try:
        container = project.wait_for_running(1)[0]
        run_id = container.labels["orchestrate.run"]
        socket_file = socket_path(project.runs / run_id)
        deadline = time.monotonic() + 30
        while not socket_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        client_script = (
            "import json, socket, struct\n"
            "request = json.dumps({'version': 1, 'action': 'exec', 'agent': 'worker', 'command': ['id']}).encode()\n"
            "connection = socket.socket(socket.AF_UNIX)\n"
            "connection.connect('/control/orchestrate.sock')\n"
            "connection.sendall(struct.pack('>cI', b'H', len(request)) + request)\n"
            "print(connection.recv(65536)[5:].decode())\n"
        )
        output = project.client.containers.run(
            "orchestrate/base:latest", ["python3", "-c", client_script], user="0", remove=True,
            labels={"orchestrate.test": project.name}, network_mode="none",
            volumes={str(socket_file.parent): {"bind": "/control", "mode": "ro"}},
        ).decode()
        assert "another PID namespace" in output
        assert run.poll() is None
    finally:
        run.terminate()
        run.communicate(timeout=60)

    records = audit_records(project, run_id)
    assert [record["kind"] for record in records].count("control-rejected") == 1
    assert not [record for record in records if record["kind"] == "user-exec"]


def test_shell_output_filtered_for_terminal(project: Project, shell_runs: list[str]) -> None:
    # The clipboard write and the DCS passthrough are split by `sleep`, so they reach the relay in separate reads.
    script = (r"printf 'start\033]52;c;ZXZpbAo='; sleep 0.3; printf '\007mid\033Ptmux;\033\033]52;c;eA==\007'; "
              r"sleep 0.3; printf '\033\\\033[?1000h\033]0;title\007end\n'")
    child = spawn(project, "shell", "--source", "src", "--runs-dir", "runs", "--", "sh", "-c", script)
    shell_runs.append(run_id_from(child))
    child.expect(pexpect.EOF)
    child.close()
    output = child.before
    assert child.exitstatus == 0
    assert "startmid" in output
    assert "\x1b[?1000h\x1b]0;title\x1b\\end" in output
    assert "]52" not in output
    assert "\x1bP" not in output
    # The mouse mode the program switched on is switched off after it.
    assert output.index("\x1b[?1000l") > output.index("end")


def test_stalled_exec_client_does_not_delay_stop(project: Project) -> None:
    manifest = project.manifest([{"name": "worker", "command": ["sleep", "60"]}])
    run = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    try:
        container = project.wait_for_running(1)[0]
        run_id = container.labels["orchestrate.run"]
        socket_file = socket_path(project.runs / run_id)
        deadline = time.monotonic() + 30
        while not socket_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(socket_file) as stalled:
            # The client asks for endless output and never reads it.
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(encode(HELLO, b'{"version": 1, "action": "exec", "agent": "worker", "command": ["yes"]}'))
            time.sleep(2)
            stopping = time.monotonic()
            run.terminate()
            run.communicate(timeout=60)
            stop_seconds = time.monotonic() - stopping
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=60)
    # A stop takes about 2 s on the test machine; a relay stuck on the client made it about 13 s.
    assert stop_seconds < 6
