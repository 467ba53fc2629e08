"""posture_drift on a real container: none right after create, then the changes that `docker` commands make."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from orchestrator.manifest import load_manifest
from orchestrator.plan import ContainerSpec
from orchestrator.posture import posture_drift
from orchestrator.runner import plan_manifest
from orchestrator.runtime.docker import DockerRuntime
from orchestrator.workspace import prepare

from .conftest import TEST_LABEL, Project


@dataclass
class Agent:
    runtime: DockerRuntime
    spec: ContainerSpec
    container_id: str


def docker_cli(*args: str) -> None:
    completed = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 0, f"docker {' '.join(args)} failed: {completed.stderr.strip()}"


@pytest.fixture
def agent(project: Project) -> Iterator[Agent]:
    """Create and start one agent container from a real plan, as the supervisor does; remove it afterwards."""
    manifest = project.manifest(
        [{"name": "sleeper", "command": ["sleep", "30"], "resources": {"memory": "512m", "cpus": 0.5, "pids": 64}}]
    )
    runtime = DockerRuntime()
    plan = plan_manifest(load_manifest(manifest), runtime, runs_root=project.runs)
    prepare(plan)
    planned = plan.agents[0].container
    spec = planned.model_copy(update={"labels": {**planned.labels, TEST_LABEL: "posture"}})

    container_id = runtime.create(spec, {}).container_id
    try:
        # The lifeline wrapper ends the agent when no process keeps its input open, so attach before the start.
        lifeline = runtime.attach_lifeline(container_id)
        try:
            runtime.start(container_id)
            yield Agent(runtime=runtime, spec=spec, container_id=container_id)
        finally:
            lifeline.close()
    finally:
        runtime.remove(container_id)
        runtime.close()


def test_new_container_has_no_drift(agent: Agent) -> None:
    inspect = agent.runtime.inspect(agent.container_id)

    assert inspect["State"]["Running"] is True
    assert posture_drift(agent.spec, inspect) == []


def test_memory_update_is_drift(agent: Agent) -> None:
    docker_cli("update", "--memory", "256m", agent.container_id)

    drifts = posture_drift(agent.spec, agent.runtime.inspect(agent.container_id))

    assert [drift.setting for drift in drifts] == ["memory"]
    assert drifts[0].expected == "512 MiB"
    assert drifts[0].actual == "256 MiB"


@pytest.fixture
def internal_network(docker_client: docker.DockerClient) -> Iterator[str]:
    network = docker_client.networks.create(
        f"orchestrate-test-posture-{secrets.token_hex(3)}", driver="bridge", internal=True,
        labels={TEST_LABEL: "posture"},
    )
    try:
        yield str(network.name)
    finally:
        network.remove()


def test_network_connect_is_drift(agent: Agent, internal_network: str) -> None:
    networks = agent.runtime.inspect(agent.container_id)["NetworkSettings"]["Networks"] or {}
    # A container created with networking disabled has no endpoint on "none" to disconnect (Docker 20.10).
    if "none" in networks:
        docker_cli("network", "disconnect", "none", agent.container_id)
    docker_cli("network", "connect", internal_network, agent.container_id)
    try:
        drifts = posture_drift(agent.spec, agent.runtime.inspect(agent.container_id))
    finally:
        # Removing a network-disabled container leaves its endpoint behind on Docker 20.10, and then the
        # network cannot be removed, so the endpoint is disconnected first.
        docker_cli("network", "disconnect", internal_network, agent.container_id)

    assert [drift.setting for drift in drifts] == ["networks"]
    assert drifts[0].expected == "none"
    assert drifts[0].actual == internal_network
