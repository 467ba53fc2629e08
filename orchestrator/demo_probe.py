"""The probe of `orchestrate demo`: try to cross each boundary and print one JSON line per attempt.

It runs inside the sandboxed agent, and inside the demo's control container
for the network attempts. Each line is {"name", "ok", "detail"}, where "ok"
says whether the attempt succeeded; the demo decides what that means. The
only network peer it ever addresses is the canary whose addresses it is
given, so even a broken sandbox sends nothing off the machine. It imports
nothing from the package, because the image has only python3.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

TCP_PORT = 8080
UDP_PORT = 9090
DNS_PORT = 5353
TIMEOUT = 2.0
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
SOURCE_FILE = "/workspace/src/demo-write-test"
WORKSPACE_FILE = "/workspace/output/demo-write-test"


class Failed(Exception):
    """An attempt that did not succeed for a reason other than a failed system call."""


class Reporter:
    """Writes each result as a JSON line to stdout and, when given, to a results file, as it arrives."""

    def __init__(self, results: IO[str] | None) -> None:
        self._results = results
        self._lock = threading.Lock()

    def report(self, name: str, action: Callable[[], str]) -> None:
        try:
            line = {"name": name, "ok": True, "detail": action()}
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "")
            line = {"name": name, "ok": False, "detail": f"{code}: {exc.strerror or exc}" if code else str(exc)}
        except Failed as exc:
            line = {"name": name, "ok": False, "detail": str(exc)}
        text = json.dumps(line)
        with self._lock:
            print(text, flush=True)
            if self._results is not None:
                self._results.write(text + "\n")
                self._results.flush()


def tcp(address: str) -> str:
    with socket.create_connection((address, TCP_PORT), timeout=TIMEOUT) as connection:
        return f"connected to {address} port {TCP_PORT}: {connection.recv(64).decode(errors='replace').strip()}"


def _udp_exchange(address: str, port: int, payload: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.settimeout(TIMEOUT)
        udp.sendto(payload, (address, port))
        try:
            reply, _ = udp.recvfrom(512)
        except TimeoutError as exc:
            raise OSError(errno.ETIMEDOUT, f"no reply within {TIMEOUT:g} s") from exc
    return reply


def udp(address: str) -> str:
    reply = _udp_exchange(address, UDP_PORT, b"demo")
    return f"{address} port {UDP_PORT} echoed {reply!r}"


def dns(address: str) -> str:
    query = struct.pack(">HHHHHH", 0x0D30, 0x0100, 1, 0, 0, 0)
    query += b"\x06canary\x04demo\x00" + struct.pack(">HH", 1, 1)
    reply = _udp_exchange(address, DNS_PORT, query)
    return f"{address} port {DNS_PORT} answered {len(reply)} bytes"


def icmp(address: str) -> str:
    # An unprivileged ICMP socket (ping_group_range); a raw socket would need CAP_NET_RAW.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as ping:
        ping.settimeout(TIMEOUT)
        ping.sendto(struct.pack(">BBHHH", 8, 0, 0, 0, 1) + b"demo", (address, 0))
        try:
            ping.recvfrom(512)
        except TimeoutError as exc:
            raise OSError(errno.ETIMEDOUT, f"no echo reply within {TIMEOUT:g} s") from exc
    return f"{address} answered an echo request"


def ipv6(address: str) -> str:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as connection:
        connection.settimeout(TIMEOUT)
        connection.connect((address, TCP_PORT))
        return f"connected to [{address}] port {TCP_PORT}"


def raw_socket() -> str:
    opened = []
    last = OSError(errno.EPERM, "no socket family tried")
    for family, kind, protocol, name in (
        (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, "AF_INET raw"),
        (socket.AF_PACKET, socket.SOCK_RAW, 0, "AF_PACKET"),
    ):
        try:
            socket.socket(family, kind, protocol).close()
            opened.append(name)
        except OSError as exc:
            last = exc
    if not opened:
        raise last
    return "opened " + " and ".join(opened)


def identity() -> str:
    uid, gid = os.getuid(), os.getgid()
    text = f"uid={uid} gid={gid} groups={','.join(map(str, os.getgroups())) or 'none'}"
    if uid == 0 or gid == 0 or 0 in os.getgroups():
        return text
    raise Failed(f"not root: {text}")


def sudo() -> str:
    found = [path for name in ("sudo", "doas") if (path := shutil.which(name)) is not None]
    setuid = _setuid_programs()
    if found or setuid:
        return "found " + ", ".join(found + setuid)
    # su without its setuid bit runs with the caller's own privileges, so it cannot switch users.
    su = shutil.which("su")
    note = f"; {su} is there, without its setuid bit" if su else ""
    raise Failed(f"no sudo or doas, and no setuid or setgid program in PATH{note}")


def _setuid_programs() -> list[str]:
    found = []
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(entry.path)
    return found


def docker_socket() -> str:
    errors = []
    for path in DOCKER_SOCKETS:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            try:
                client.connect(path)
            except OSError as exc:
                errors.append(f"{path}: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
                continue
            return f"connected to {path}"
    raise Failed("; ".join(errors))


def write(path: str) -> str:
    Path(path).write_text("written by the demo probe\n", encoding="utf-8")
    return f"wrote {path}"


def secret(name: str, sha256: str) -> str:
    if name in os.environ:
        return f"{name} is set"
    # Every readable environment of every process, in case the value arrived under another name.
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in entries:
            value = entry.partition(b"=")[2]
            if value and hashlib.sha256(value).hexdigest() == sha256:
                return f"its value is in {environ}"
    raise Failed(f"{name} is not set, and its value is in no process's environment")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--canary", required=True, help="IPv4 address of the canary")
    parser.add_argument("--canary6", help="IPv6 address of the canary")
    parser.add_argument("--network-only", action="store_true", help="Only the network attempts (control).")
    parser.add_argument("--results", help="Also append each JSON line to this file.")
    parser.add_argument("--secret-name", default="ORCHESTRATE_DEMO_SECRET")
    parser.add_argument("--secret-sha256", default="")
    arguments = parser.parse_args(argv)

    results = open(arguments.results, "a", encoding="utf-8") if arguments.results else None
    reporter = Reporter(results)
    network: list[tuple[str, Callable[[], str]]] = [
        ("tcp", lambda: tcp(arguments.canary)),
        ("udp", lambda: udp(arguments.canary)),
        ("dns", lambda: dns(arguments.canary)),
        ("icmp", lambda: icmp(arguments.canary)),
    ]
    if arguments.canary6:
        network.append(("ipv6", lambda: ipv6(arguments.canary6)))
    # The network attempts wait for timeouts, so they run at once and report as each ends.
    threads = [threading.Thread(target=reporter.report, args=item) for item in network]
    for thread in threads:
        thread.start()
    if not arguments.network_only:
        reporter.report("raw-socket", raw_socket)
        reporter.report("root", identity)
        reporter.report("sudo", sudo)
        reporter.report("docker-socket", docker_socket)
        reporter.report("write-source", lambda: write(SOURCE_FILE))
        reporter.report("write-workspace", lambda: write(WORKSPACE_FILE))
        reporter.report("secret", lambda: secret(arguments.secret_name, arguments.secret_sha256))
    for thread in threads:
        thread.join()
    if results is not None:
        results.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
