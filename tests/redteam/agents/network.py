"""Network attacks. Every packet is aimed at the canary the test started, or at the container itself.

The canary runs on an internal Docker network with no route off the machine,
so even a broken sandbox sends nothing outside it.
"""

import os
import socket
import struct
import time

from common import attempt, context, process_ids, verdict, walk

TIMEOUT = 3


def _tcp(family, address, port):
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect((address, port))
        return client.recv(64).decode(errors="replace").strip()


def _udp(family, address, port, payload):
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(payload, (address, port))
        reply, _ = client.recvfrom(512)
        return f"{len(reply)} bytes"


def dns_query():
    query = struct.pack(">HHHHHH", 0x5eed, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label for label in (b"canary", b"redteam", b"test")) + b"\x00"
    return query + struct.pack(">HH", 1, 1)


def tcp_canary():
    canary = context()["canary"]
    steps = {"tcp4": attempt(lambda: _tcp(socket.AF_INET, canary["ipv4"], canary["tcp"]))}
    return verdict("TCP connect to the canary over IPv4", steps)


def udp_canary():
    canary = context()["canary"]
    steps = {"udp4": attempt(lambda: _udp(socket.AF_INET, canary["ipv4"], canary["udp"], b"redteam"))}
    return verdict("UDP datagram to the canary's echo port", steps)


def dns_canary():
    canary = context()["canary"]
    steps = {
        f"dns4-{port}": attempt(lambda port=port: _udp(socket.AF_INET, canary["ipv4"], port, dns_query()))
        for port in canary["dns"]
    }
    # The resolver configuration is read, never queried: its servers may be real ones off this machine.
    with open("/etc/resolv.conf") as handle:
        resolv = [line.strip() for line in handle if line.startswith("nameserver")]
    return verdict("DNS query to the canary's resolver", steps, resolv_conf=resolv)


def _ping(family, protocol, request_type, address):
    with socket.socket(family, socket.SOCK_DGRAM, protocol) as client:
        client.settimeout(TIMEOUT)
        header = struct.pack(">BBHHH", request_type, 0, 0, 0x5eed, 1)
        client.sendto(header + b"redteam", (address, 0))
        reply, _ = client.recvfrom(512)
        return f"{len(reply)} bytes"


def _raw_icmp(address):
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as client:
        client.settimeout(TIMEOUT)
        header = struct.pack(">BBHHH", 8, 0, 0, 0x5eed, 2)
        client.sendto(header + b"redteam", (address, 0))
        return "sent"


def icmp_canary():
    canary = context()["canary"]
    steps = {
        "ping-socket-v4": attempt(lambda: _ping(socket.AF_INET, socket.IPPROTO_ICMP, 8, canary["ipv4"])),
        "raw-icmp-v4": attempt(lambda: _raw_icmp(canary["ipv4"])),
        "ping-socket-v6": attempt(lambda: _ping(socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, canary["ipv6"])),
    }
    return verdict("ICMP echo to the canary", steps)


def ipv6_canary():
    canary = context()["canary"]
    steps = {
        "tcp6": attempt(lambda: _tcp(socket.AF_INET6, canary["ipv6"], canary["tcp"])),
        "udp6": attempt(lambda: _udp(socket.AF_INET6, canary["ipv6"], canary["udp"], b"redteam")),
    }
    return verdict("TCP and UDP to the canary's IPv6 address", steps)


def raw_socket():
    canary = context()["canary"]

    def send_raw_udp():
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
            header = struct.pack(">HHHH", 40000, canary["udp"], 8 + 7, 0)
            raw.sendto(header + b"redteam", (canary["ipv4"], 0))
            return "sent"

    steps = {
        "open-raw-tcp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()),
        "send-raw-udp": attempt(send_raw_udp),
    }
    return verdict("raw IP socket that forges a UDP datagram to the canary", steps)


def packet_socket():
    def open_packet(kind):
        with socket.socket(socket.AF_PACKET, kind, socket.htons(0x0003)):
            return f"opened, interfaces {socket.if_nameindex()}"

    steps = {
        "packet-raw": attempt(lambda: open_packet(socket.SOCK_RAW)),
        "packet-dgram": attempt(lambda: open_packet(socket.SOCK_DGRAM)),
    }
    return verdict("AF_PACKET socket for link-layer frames", steps)


def abstract_listen():
    """Listen on an abstract Unix socket that the partner agent tries to reach."""
    name = context()["abstract_socket"]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(4)
    server.settimeout(8)
    steps = {"accept": attempt(lambda: server.accept()[0].recv(64).decode(errors="replace"))}
    server.close()
    return verdict("accept a connection from another agent on an abstract Unix socket", steps)


def abstract_connect():
    name = context()["abstract_socket"]

    def connect():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect("\0" + name)
            client.sendall(b"redteam")
            return "connected"

    # The partner may start a moment later, so retry for as long as it listens.
    deadline = time.monotonic() + 6
    step = attempt(connect)
    while not step["ok"] and time.monotonic() < deadline:
        time.sleep(0.2)
        step = attempt(connect)
    steps = {"connect": step}
    # A pathname socket in the shared tree would be the other way between agents; it is read-only.
    steps["bind-shared"] = attempt(lambda: socket.socket(socket.AF_UNIX).bind("/workspace/shared/redteam.sock"))
    return verdict("connect to another agent's abstract Unix socket", steps)


def _connect_unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(path)
        client.sendall(b"GET /version HTTP/1.0\r\n\r\n")
        return client.recv(128).decode(errors="replace")


def docker_api():
    steps = {}
    found = [path for path, info in walk("/") if (info.st_mode & 0o170000) == 0o140000]
    for path in found + ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]:
        steps[f"unix:{path}"] = attempt(lambda path=path: _connect_unix(path))

    # The engine's TCP ports on the container's own loopback, the only host this network namespace has.
    for port in (2375, 2376):
        steps[f"tcp:localhost:{port}"] = attempt(lambda port=port: _tcp(socket.AF_INET, "127.0.0.1", port))

    host = os.environ.get("DOCKER_HOST")
    steps["DOCKER_HOST"] = {"ok": host is not None, "detail": host}
    holders = []
    for pid in process_ids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if b"DOCKER_HOST=" in handle.read():
                    holders.append(pid)
        except OSError:
            continue
    steps["DOCKER_HOST-in-proc"] = {"ok": bool(holders), "detail": holders}
    return verdict("reach the Docker API through a socket or DOCKER_HOST", steps, sockets_found=found)


def no_route():
    """Show that no cloud metadata service is reachable: no interface but loopback and no route.

    No request is sent, because a metadata address that answered would be a real service.
    """
    interfaces = sorted(os.listdir("/sys/class/net"))
    with open("/proc/net/route") as handle:
        routes4 = handle.read().splitlines()[1:]
    try:
        with open("/proc/net/ipv6_route") as handle:
            routes6 = [line for line in handle.read().splitlines() if not line.rstrip().endswith(" lo")]
    except OSError:
        routes6 = []
    steps = {
        "interfaces": {"ok": interfaces != ["lo"], "detail": interfaces},
        "ipv4-routes": {"ok": bool(routes4), "detail": routes4},
        "ipv6-routes": {"ok": bool(routes6), "detail": routes6},
    }
    return verdict("find an interface or route that could reach a cloud metadata service", steps)


SCENARIOS = {
    "net-tcp": tcp_canary,
    "net-udp": udp_canary,
    "net-dns": dns_canary,
    "net-icmp": icmp_canary,
    "net-ipv6": ipv6_canary,
    "net-raw-socket": raw_socket,
    "net-packet-socket": packet_socket,
    "net-abstract-listen": abstract_listen,
    "net-abstract-connect": abstract_connect,
    "net-docker-api": docker_api,
    "net-metadata-route": no_route,
}
