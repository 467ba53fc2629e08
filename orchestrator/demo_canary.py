"""The canary server of `orchestrate demo`: it runs in a container on the demo's own internal network.

TCP clients on port 8080 get the line "canary"; UDP datagrams to port 9090
come back unchanged; DNS queries on UDP port 5353 get one A record. So the
probe can tell a reply from a timeout. The file is copied into the canary
container and run with the image's python3; it imports nothing from the package.
"""

from __future__ import annotations

import socket
import struct
import threading

TCP_PORT = 8080
UDP_PORT = 9090
DNS_PORT = 5353
# A documentation address (TEST-NET-1) for the DNS reply: it only has to exist, so nothing ever contacts it.
DNS_ANSWER = "192.0.2.1"


def _server(kind: int, port: int) -> socket.socket:
    # Dual-stack, so the canary answers on its IPv4 and IPv6 addresses alike.
    server = socket.socket(socket.AF_INET6, kind)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", port))
    return server


def serve_tcp() -> None:
    server = _server(socket.SOCK_STREAM, TCP_PORT)
    server.listen(16)
    while True:
        client, _ = server.accept()
        with client:
            client.sendall(b"canary\n")


def serve_udp() -> None:
    server = _server(socket.SOCK_DGRAM, UDP_PORT)
    while True:
        data, peer = server.recvfrom(512)
        server.sendto(data, peer)


def serve_dns() -> None:
    server = _server(socket.SOCK_DGRAM, DNS_PORT)
    while True:
        query, peer = server.recvfrom(512)
        if len(query) < 12:
            continue
        # The question is echoed and one answer points back at it by a compression pointer to offset 12.
        header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(DNS_ANSWER)
        server.sendto(header + query[12:] + answer, peer)


def main() -> None:
    threading.Thread(target=serve_udp, daemon=True).start()
    threading.Thread(target=serve_dns, daemon=True).start()
    print("canary ready", flush=True)
    serve_tcp()


if __name__ == "__main__":
    main()
