"""A canary server for network probes: TCP on 8080 and a DNS responder on UDP 5353.

It runs in a test container on an internal Docker network that the test
creates, so nothing it serves is reachable from outside this machine. Every
TCP client gets the line "canary", and every DNS query gets an answer with
one A record (192.0.2.1, a documentation address), so a probe can tell a
reply from a timeout.
"""

import socket
import struct
import threading


def serve_tcp() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 8080))
    server.listen(16)
    while True:
        client, _ = server.accept()
        with client:
            client.sendall(b"canary\n")


def serve_dns() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 5353))
    while True:
        query, peer = server.recvfrom(512)
        if len(query) < 12:
            continue
        question = query[12:]
        header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
        server.sendto(header + question + answer, peer)


threading.Thread(target=serve_dns, daemon=True).start()
print("canary ready", flush=True)
serve_tcp()
