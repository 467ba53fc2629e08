"""The parsers of the /proc files that `orchestrate validate` reads from the host."""

from __future__ import annotations

from orchestrator.procview import container_uid, parse_interfaces, parse_mountinfo, parse_routes, parse_status

STATUS = """Name:\tdocker-init
Uid:\t1000\t1000\t1000\t1000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000002000
NoNewPrivs:\t1
Seccomp:\t2
"""


def test_status_fields_parsed() -> None:
    parsed = parse_status(7, STATUS)

    assert parsed.uids == (1000, 1000, 1000, 1000)
    assert parsed.cap_bounding == 1 << 13
    assert parsed.no_new_privs == "1"
    assert parsed.seccomp == "2"


def test_status_missing_capability_reads_as_unproven() -> None:
    assert parse_status(7, "Name:\tx\n").cap_effective == -1


def test_interfaces_from_both_files() -> None:
    net_dev = "header\nheader\n    lo: 0 0\n  eth0: 0 0\n"
    if_inet6 = "fe800000000000000042acfffe150002 14e 40 20 c0     eth1\n"

    assert parse_interfaces(net_dev, if_inet6) == ["eth0", "eth1", "lo"]


def test_loopback_ipv6_routes_ignored() -> None:
    lo_route = "00000000000000000000000000000001 80 " + "0" * 32 + " 00 " + "0" * 32 + " 0 2 0 80200001 lo\n"
    eth_route = "fdd3a7e5000100000000000000000000 40 " + "0" * 32 + " 00 " + "0" * 32 + " 0 1 0 1 eth0\n"

    assert parse_routes("header\n", lo_route) == []
    assert parse_routes("header\n", eth_route) == ["fdd3a7e5000100000000000000000000/64 dev eth0"]


def test_mountinfo_unescapes_and_reads_mode() -> None:
    text = "95 76 254:0 /tmp/a\\040b /workspace/shared ro,relatime shared:1 - ext4 /dev/vda rw\n"

    (mount,) = parse_mountinfo(text)

    assert mount.root == "/tmp/a b"
    assert mount.mount_point == "/workspace/shared"
    assert mount.read_only is True
    assert mount.fs_type == "ext4"


def test_container_uid_through_map() -> None:
    assert container_uid(100000, "0 100000 65536\n") == 0
    assert container_uid(1000, "0 0 4294967295\n") == 1000
    assert container_uid(5, "0 100000 65536\n") is None
