"""Probe the sandbox from inside and write what held and what did not to a JSON file.

Each probe records either "ok" details or the error it met, so the tests on
the host decide what counts as a pass. The probe only talks to the canary
server whose address it is given; it sends nothing anywhere else.
"""

import argparse
import errno
import hashlib
import json
import os
import socket
import stat
import struct
import sys

SKIPPED_TREES = ("/proc", "/sys", "/dev")


def attempt(action):
    try:
        return {"ok": True, "detail": action()}
    except OSError as exc:
        return {"ok": False, "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)), "error": str(exc)}


def tcp_connect(address: str) -> str:
    with socket.create_connection((address, 8080), timeout=3) as connection:
        return connection.recv(64).decode(errors="replace").strip()


def dns_query(address: str) -> str:
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in ("canary", "test")) + b"\x00"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(3)
        udp.sendto(query, (address, 5353))
        reply, _ = udp.recvfrom(512)
    return f"{len(reply)} bytes"


def raw_socket() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP):
        return "opened"


def write_file(path: str) -> str:
    with open(path, "w") as handle:
        handle.write("probe\n")
    return path


def walk_filesystem():
    """Yield (path, lstat) for every entry outside the kernel's virtual trees."""
    pending = ["/"]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.path in SKIPPED_TREES:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield entry.path, info
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)


def connect_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(path)
        return "connected"


def status_fields() -> dict:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"):
                fields[key] = value.strip()
    return fields


def read_first(*paths: str):
    for path in paths:
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError:
            continue
    return None


def environment_hashes() -> set:
    values = set(os.environ.values())
    try:
        with open("/proc/1/environ", "rb") as environ:
            for item in environ.read().split(b"\0"):
                values.add(item.partition(b"=")[2].decode(errors="replace"))
    except OSError:
        pass
    return {hashlib.sha256(value.encode()).hexdigest() for value in values}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--canary", required=True)
    parser.add_argument("--marker", default="")
    parser.add_argument("--secret-name", default="")
    parser.add_argument("--secret-sha256", default="")
    parser.add_argument("--out", default="/workspace/output/probe.json")
    parser.add_argument("--full", action="store_true", help="also walk the file system")
    options = parser.parse_args()

    report = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "tcp_canary": attempt(lambda: tcp_connect(options.canary)),
        "dns_canary": attempt(lambda: dns_query(options.canary)),
        "raw_socket": attempt(raw_socket),
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "status": status_fields(),
        "pids_max": read_first("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
        "write_source": attempt(lambda: write_file("/workspace/src/probe-was-here")),
        "write_output": attempt(lambda: write_file("/workspace/output/probe-was-here")),
        "write_root": attempt(lambda: write_file("/etc/probe-was-here")),
        "write_tmp": attempt(lambda: write_file("/tmp/probe-was-here")),
        "write_home": attempt(lambda: write_file(os.path.expanduser("~/probe-was-here"))),
        "workspace_entries": sorted(os.listdir("/workspace")),
        "source_entries": sorted(os.listdir("/workspace/src")),
        "secret_name_present": bool(options.secret_name) and options.secret_name in os.environ,
        "secret_value_present": options.secret_sha256 in environment_hashes(),
        "sudo": any(os.path.exists(path) for path in ("/usr/bin/sudo", "/bin/sudo", "/usr/sbin/sudo")),
    }

    masked = "/workspace/src/runs"
    report["masked_runs_entries"] = sorted(os.listdir(masked)) if os.path.isdir(masked) else None

    if options.full:
        if options.marker:
            # The probe's own copy of the marker shows that the walk would find a visible one.
            write_file(os.path.join("/tmp", options.marker))
        sockets, setuid, markers = [], [], []
        for path, info in walk_filesystem():
            if stat.S_ISSOCK(info.st_mode):
                sockets.append({"path": path, "connect": attempt(lambda p=path: connect_unix(p))})
            if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                setuid.append(path)
            if options.marker and os.path.basename(path) == options.marker:
                markers.append(path)
        report["sockets"] = sockets
        report["setuid_files"] = setuid
        report["marker_paths"] = markers
        report["docker_socket"] = [
            {"path": path, "connect": attempt(lambda p=path: connect_unix(p))}
            for path in ("/var/run/docker.sock", "/run/docker.sock")
        ]

    with open(options.out, "w") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
