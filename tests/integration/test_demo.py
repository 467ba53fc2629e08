"""`orchestrate demo` end to end: every boundary holds, the control reaches the canary, nothing is left."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import docker
import pytest

from .conftest import ORCHESTRATE, _clean_environment

AGENT_ROWS = {"tcp", "udp", "dns", "icmp", "ipv6", "raw-socket", "root", "sudo", "docker-socket", "write-source",
              "write-workspace", "secret"}


@pytest.fixture(scope="module")
def demo(docker_client: docker.DockerClient) -> dict[str, Any]:
    completed = subprocess.run([*ORCHESTRATE, "demo", "--json"], capture_output=True, text=True, timeout=120,
                               env=_clean_environment(), check=False)
    try:
        report: dict[str, Any] = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"demo printed no JSON (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    report["exit_code"] = completed.returncode
    return report


def test_demo_exits_0(demo: dict[str, Any]) -> None:
    assert demo["exit_code"] == 0, json.dumps(demo, indent=2)
    assert demo["ok"] is True
    assert demo["problems"] == []


def test_every_boundary_held(demo: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in demo["rows"]}

    assert set(rows) == AGENT_ROWS
    assert [name for name, row in rows.items() if not row["held"]] == []


def test_control_reaches_canary(demo: dict[str, Any]) -> None:
    reached = {row["name"] for row in demo["control"] if row["held"]}

    assert reached == {"tcp", "udp", "dns", "icmp", "ipv6"}


def test_probes_aim_at_own_canary(demo: dict[str, Any]) -> None:
    network = demo["canary"]["network"]

    assert network.startswith("orchestrate-demo-")
    assert demo["canary"]["ipv6"].startswith("fd")


def test_nothing_left_behind(demo: dict[str, Any], docker_client: docker.DockerClient) -> None:
    # The network is named orchestrate-demo-<demo id>, and every container and network carries that id.
    label = "orchestrate.demo=" + demo["canary"]["network"].removeprefix("orchestrate-demo-")
    containers = docker_client.api.containers(all=True, filters={"label": label})
    run_containers = docker_client.api.containers(all=True, filters={"label": f"orchestrate.run={demo['run_id']}"})
    networks = docker_client.api.networks(filters={"label": label})

    assert containers == []
    assert run_containers == []
    assert [item["Name"] for item in networks] == []
