"""Posture and validate checks of an agent behind the egress broker: its own network, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan import ContainerSpec, RunPlan
from orchestrator.posture import posture_drift
from orchestrator.validate_checks import check_container

from .conftest import agent, manifest_data
from .test_posture import engine_inspect
from .test_validate_checks import DEFAULT_ROUTE, HOMES, NET_DEV_ETH0, ROUTE_HEADER, failed, hardened_view

PlanFor = Callable[..., RunPlan]
# The link route of the agent's own subnet, 172.30.0.0/16 on eth0.
SUBNET_ROUTE = "eth0\t00001EAC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
LOOPBACK_ROUTE = "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"


@pytest.fixture
def spec(plan_for: PlanFor, source_dir: Path) -> ContainerSpec:
    resources = {"cpus": 0.5, "memory": "512m", "pids": 128}
    data = manifest_data(source_dir, agents=[agent("caller", resources=resources, network="allowlist",
                                                   egress={"allow": ["api.example.test:443"]})])
    return plan_for(data).agents[0].container


def egress_inspect(spec: ContainerSpec) -> dict[str, Any]:
    inspect = engine_inspect(spec)
    network = spec.security.network_mode
    inspect["HostConfig"]["NetworkMode"] = network
    # The engine leaves NetworkDisabled out of Config when it is false.
    del inspect["Config"]["NetworkDisabled"]
    inspect["NetworkSettings"]["Networks"] = {network: {"IPAddress": "172.30.0.3"}}
    return inspect


def egress_view(spec: ContainerSpec, routes: str = SUBNET_ROUTE + DEFAULT_ROUTE) -> Any:
    return replace(hardened_view(spec), net_dev=NET_DEV_ETH0, net_route=ROUTE_HEADER + routes)


def test_own_network_is_no_drift(spec: ContainerSpec) -> None:
    assert spec.security.network_mode.endswith("--egress-caller")
    assert posture_drift(spec, egress_inspect(spec)) == []


def test_second_network_is_drift(spec: ContainerSpec) -> None:
    inspect = egress_inspect(spec)
    inspect["NetworkSettings"]["Networks"]["bridge"] = {"IPAddress": "172.17.0.5"}

    drifts = posture_drift(spec, inspect)

    assert [drift.setting for drift in drifts] == ["networks"]
    assert "bridge" in drifts[0].actual


def test_networking_disabled_is_drift(spec: ContainerSpec) -> None:
    inspect = egress_inspect(spec)
    inspect["Config"]["NetworkDisabled"] = True

    assert [drift.setting for drift in posture_drift(spec, inspect)] == ["network_disabled"]


def test_validate_accepts_own_network(spec: ContainerSpec) -> None:
    checks = check_container(egress_inspect(spec), egress_view(spec), spec, homes=HOMES)

    assert failed(checks) == []


def test_validate_rejects_other_network(spec: ContainerSpec) -> None:
    inspect = egress_inspect(spec)
    inspect["NetworkSettings"]["Networks"] = {"bridge": {}}
    inspect["HostConfig"]["NetworkMode"] = "bridge"

    failures = failed(check_container(inspect, egress_view(spec), spec, homes=HOMES))

    assert ("network mode", "inspect") in failures
    assert ("attached networks", "inspect") in failures


def test_validate_rejects_second_interface(spec: ContainerSpec) -> None:
    view = replace(egress_view(spec), net_dev=NET_DEV_ETH0 + NET_DEV_ETH0.splitlines()[-1].replace("eth0", "eth1"))

    assert failed(check_container(egress_inspect(spec), view, spec, homes=HOMES)) == [("interfaces", "/proc")]


def test_validate_rejects_route_off_eth0(spec: ContainerSpec) -> None:
    view = egress_view(spec, SUBNET_ROUTE + LOOPBACK_ROUTE.replace("lo\t", "eth1\t"))

    assert failed(check_container(egress_inspect(spec), view, spec, homes=HOMES)) == [("routes", "/proc")]
