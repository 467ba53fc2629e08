"""Unit tests of the broker's host policy: matching, deny wins, IP literals and private addresses."""

from __future__ import annotations

import ipaddress

import pytest

from orchestrator.broker.policy import HostPolicy, forbidden_address, ip_literal, split_host_port


def policy(allow: list[str], deny: list[str] | None = None, private: list[str] | None = None) -> HostPolicy:
    return HostPolicy.from_lists(allow, deny or [], private or [])


def test_allowed_host_needs_exact_port() -> None:
    hosts = policy(["api.example.test:443"])

    assert hosts.check_host("api.example.test", 443).allowed
    assert not hosts.check_host("api.example.test", 80).allowed
    assert not hosts.check_host("api.example.test", 8443).allowed


def test_host_match_is_exact_not_suffix() -> None:
    hosts = policy(["example.test:443"])

    assert not hosts.check_host("evil.example.test", 443).allowed
    assert not hosts.check_host("example.test.evil", 443).allowed
    assert not hosts.check_host("xexample.test", 443).allowed


def test_host_match_ignores_case_and_trailing_dot() -> None:
    hosts = policy(["api.example.test:443"])

    assert hosts.check_host("API.Example.TEST", 443).allowed
    assert hosts.check_host("api.example.test.", 443).allowed


@pytest.mark.parametrize("deny", ["api.example.test", "api.example.test:443"])
def test_deny_wins_over_allow(deny: str) -> None:
    hosts = policy(["api.example.test:443"], deny=[deny], private=["api.example.test:443"])

    decision = hosts.check_host("api.example.test", 443)

    assert not decision.allowed
    assert "denied" in decision.reason


@pytest.mark.parametrize("literal", [
    "127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "[::1]", "::1",
    "::ffff:127.0.0.1", "[::ffff:7f00:1]", "169.254.169.254", "fe80::1%eth0", "0", "017700000001",
])
def test_ip_literal_forms_detected(literal: str) -> None:
    assert ip_literal(literal) is not None


@pytest.mark.parametrize("name", ["example.test", "1e100.test", "localhost", "0x.test", "api-1.example.test"])
def test_names_are_not_ip_literals(name: str) -> None:
    assert ip_literal(name) is None


@pytest.mark.parametrize("literal", ["127.0.0.1", "2130706433", "0x7f000001", "[::ffff:7f00:1]", "169.254.169.254"])
def test_ip_literal_rejected_even_when_listed(literal: str) -> None:
    hosts = policy([f"{literal}:443"])

    decision = hosts.check_host(literal, 443)

    assert not decision.allowed
    assert "IP literal" in decision.reason


def test_ip_literal_allowed_only_with_private_opt_in() -> None:
    hosts = policy([], private=["172.20.0.5:8080"])

    assert hosts.check_host("172.20.0.5", 8080).allowed
    assert not hosts.check_host("172.20.0.5", 8081).allowed


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.17.0.2", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",
    "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::7f00:1", "fd00:ec2::254",
    # IPv4-translated (SIIT) and deprecated site-local addresses, which ipaddress counts as global.
    "::ffff:0:a9fe:a9fe", "::ffff:0:7f00:1", "fec0::1",
])
def test_private_and_link_local_addresses_forbidden(address: str) -> None:
    assert forbidden_address(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["203.0.114.1", "2a00:1450::1"])
def test_global_addresses_not_forbidden(address: str) -> None:
    assert forbidden_address(ipaddress.ip_address(address)) is None


def test_name_resolving_to_private_address_rejected() -> None:
    hosts = policy(["api.example.test:443"])
    addresses = [ipaddress.ip_address("203.0.114.1"), ipaddress.ip_address("10.0.0.7")]

    decision = hosts.check_addresses("api.example.test", 443, addresses)

    assert not decision.allowed
    assert "10.0.0.7" in decision.reason


def test_private_address_allowed_with_opt_in() -> None:
    hosts = policy([], private=["mock-api:8080"])

    assert hosts.check_addresses("mock-api", 8080, [ipaddress.ip_address("172.20.0.5")]).allowed
    assert not hosts.check_addresses("mock-api", 8081, [ipaddress.ip_address("172.20.0.5")]).allowed


def test_name_resolving_to_nothing_rejected() -> None:
    assert not policy(["api.example.test:443"]).check_addresses("api.example.test", 443, []).allowed


def test_split_host_port_forms() -> None:
    assert split_host_port("API.example.test:443") == ("api.example.test", 443)
    assert split_host_port("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="invalid"):
        split_host_port("api.example.test")
    with pytest.raises(ValueError, match="port"):
        split_host_port("api.example.test:70000")


def test_api_route_skips_allowlist_not_deny() -> None:
    assert policy([]).check_route("api.example.test", 443).allowed
    assert not policy([], deny=["api.example.test"]).check_route("api.example.test", 443).allowed
    assert not policy([]).check_route("10.0.0.7", 443).allowed
