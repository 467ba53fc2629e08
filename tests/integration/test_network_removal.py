"""Removing a run's network on the real engine while a container outside the run is still connected to it."""

from __future__ import annotations

import secrets

import docker
import docker.errors

from orchestrator.runtime.docker import DockerRuntime

from .conftest import BASE_IMAGE, TEST_LABEL


def test_network_with_outsider_removed(docker_client: docker.DockerClient) -> None:
    name = f"orchestrate-test-removal-{secrets.token_hex(4)}"
    runtime = DockerRuntime()
    runtime.create_network(name, internal=True, labels={TEST_LABEL: "network-removal"})
    outsider = docker_client.containers.run(BASE_IMAGE, ["sleep", "60"], detach=True, network=name,
                                            labels={TEST_LABEL: "network-removal"})
    try:
        runtime.remove_network(name)

        assert docker_client.networks.list(names=[name]) == []
        outsider.reload()
        assert outsider.status == "running"
    finally:
        outsider.remove(force=True)
        try:
            docker_client.networks.get(name).remove()
        except docker.errors.NotFound:
            pass
        runtime.close()
