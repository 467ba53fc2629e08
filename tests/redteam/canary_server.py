"""The red-team canary: it replies to and logs every packet that reaches it, over IPv4 and IPv6.

It runs in a test container on an internal Docker network that the suite
creates, so nothing it serves is reachable from off this machine. It prints
one line `hit PROTOCOL PEER` per connection, datagram or ICMP echo request, so
the host can show that no agent reached it while a control container did.
Ports: TCP 8080, UDP echo 9999, DNS on UDP 53 and 5353.
"""

import socket
import struct
import threading

TCP_PORT = 8080
UDP_PORT = 9999
DNS_PORTS = (53, 5353)


def report(protocol, peer):
    print(f"hit {protocol} {peer[0]}", flush=True)


def dual_stack(kind, port):
    server = socket.socket(socket.AF_INET6, kind)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", port))
    return server


def serve_tcp():
    server = dual_stack(socket.SOCK_STREAM, TCP_PORT)
    server.listen(64)
    while True:
        client, peer = server.accept()
        report("tcp", peer)
        with client:
            client.sendall(b"canary\n")


def serve_udp(port, protocol, reply):
    server = dual_stack(socket.SOCK_DGRAM, port)
    while True:
        data, peer = server.recvfrom(2048)
        report(protocol, peer)
        server.sendto(reply(data), peer)


def dns_reply(query):
    if len(query) < 12:
        return b""
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
    return header + query[12:] + answer


def watch_icmp(family, protocol, request_type, label):
    # The kernel replies to echo requests itself; a raw socket sees a copy of each to log it.
    listener = socket.socket(family, socket.SOCK_RAW, protocol)
    while True:
        packet, peer = listener.recvfrom(2048)
        icmp = packet[(packet[0] & 0x0F) * 4:] if family == socket.AF_INET else packet
        if icmp and icmp[0] == request_type:
            report(label, peer)


threads = [
    (serve_udp, (UDP_PORT, "udp", lambda data: data)),
    *((serve_udp, (port, f"dns{port}", dns_reply)) for port in DNS_PORTS),
    (watch_icmp, (socket.AF_INET, socket.IPPROTO_ICMP, 8, "icmp")),
    (watch_icmp, (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, "icmp6")),
]
for target, arguments in threads:
    threading.Thread(target=target, args=arguments, daemon=True).start()
print("canary ready", flush=True)
serve_tcp()
