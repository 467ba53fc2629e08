"""Which host:port an agent may reach, and which resolved addresses the broker may connect to.

Hosts are matched by exact DNS name and port. A deny entry (a name, or a name
with a port) wins over every allow entry. IP literals are rejected in every
spelling that a resolver or `inet_aton` accepts (dotted, decimal, hex, octal,
short forms, IPv6 and IPv4-mapped IPv6), and names that resolve to an address
that is not globally routable are rejected too, unless the host:port is listed
in `allow_private`, the manifest's explicit opt-in.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 prefixes embed an IPv4 address in the last 32 bits (RFC 6052, RFC 8215), and so do IPv4-translated
# addresses of stateless translation (::ffff:0:a.b.c.d, RFC 2765), which ipaddress does not unwrap.
IPV4_EMBEDDING_NETWORKS = (
    ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def normalize_host(host: str) -> str:
    """Return the host in the form the lists use: lowercase, no brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def split_host_port(text: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port"); raise ValueError when the port is missing or out of range."""
    host, separator, port_text = text.strip().rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"invalid host:port {text!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return normalize_host(host), port


def ip_literal(host: str) -> IPAddress | None:
    """Return the address that `host` spells, in any form a resolver accepts, or None for a DNS name."""
    name = normalize_host(host).partition("%")[0]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    # inet_aton accepts the legacy forms that ip_address does not: 2130706433, 0x7f000001, 0177.1, 127.1.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        return None


def forbidden_address(address: IPAddress) -> str | None:
    """Return why the broker must not connect to `address`, or None when it is globally routable."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = forbidden_address(embedded)
        return None if reason is None else f"{reason} (inside {address})"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is link-local, where cloud metadata services listen"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        # fec0::/10 is deprecated (RFC 3879) but still routed within a site, and ipaddress calls it global.
        return f"{address} is a site-local address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if not address.is_global:
        return f"{address} is a private or reserved address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for network in IPV4_EMBEDDING_NETWORKS:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible addresses (::a.b.c.d), deprecated but still routed by some stacks.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


@dataclass(frozen=True)
class HostPolicy:
    """The hosts one agent may reach. Entries are normalized host:port strings, deny entries may omit the port."""

    allow: frozenset[str]
    deny: frozenset[str]
    allow_private: frozenset[str]

    @classmethod
    def from_lists(cls, allow: list[str], deny: list[str], allow_private: list[str]) -> HostPolicy:
        return cls(
            allow=frozenset(_normalize_entry(item) for item in allow),
            deny=frozenset(_normalize_entry(item) for item in deny),
            allow_private=frozenset(_normalize_entry(item) for item in allow_private),
        )

    def check_host(self, host: str, port: int) -> Decision:
        """Decide on a host:port before any resolution."""
        name = normalize_host(host)
        entry = f"{name}:{port}"
        if name in self.deny or entry in self.deny:
            return Decision(False, f"{entry} is denied")
        if entry in self.allow_private:
            return Decision(True, f"{entry} is allowed, private addresses included")
        if ip_literal(name) is not None:
            return Decision(False, f"{host} is an IP literal; only names on the allowlist are reachable")
        if entry not in self.allow:
            return Decision(False, f"{entry} is not on the allowlist")
        return Decision(True, f"{entry} is allowed")

    def check_route(self, host: str, port: int) -> Decision:
        """Decide on an API upstream: the operator named it, so it needs no allow entry, but deny still wins."""
        decision = self.check_host(host, port)
        if decision.allowed or "not on the allowlist" not in decision.reason:
            return decision
        return Decision(True, f"{normalize_host(host)}:{port} is an API upstream")

    def check_addresses(self, host: str, port: int, addresses: list[IPAddress]) -> Decision:
        """Decide on the addresses a name resolved to: all must be routable unless the entry opts in."""
        entry = f"{normalize_host(host)}:{port}"
        if not addresses:
            return Decision(False, f"{entry} did not resolve to any address")
        if entry in self.allow_private:
            return Decision(True, f"{entry} may use private addresses")
        for address in addresses:
            reason = forbidden_address(address)
            if reason is not None:
                return Decision(False, f"{entry} resolved to {reason}")
        return Decision(True, f"{entry} resolved to routable addresses")


def _normalize_entry(entry: str) -> str:
    host, separator, port = entry.strip().rpartition(":")
    if separator and port.isdigit() and host:
        return f"{normalize_host(host)}:{int(port)}"
    return normalize_host(entry)
