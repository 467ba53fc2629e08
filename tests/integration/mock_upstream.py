"""Mock model APIs for the egress tests: an internal network of the test's own with two mock servers.

The broker's upstream side in tests: nothing on this network reaches past the
machine, and the host gets no address on its bridge.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

MOCK_PORT = 8080
MOCK_SCRIPT = Path(__file__).parent / "scripts" / "mock_api.py"


@dataclass(frozen=True)
class MockUpstream:
    """The network, and two mock APIs on it: `allowed`, which tests put on the allowlist, and `other`."""

    network: str
    allowed: str
    other: str
    allowed_ip: str
    other_ip: str
    containers: tuple[Any, ...]

    def requests_seen(self, container: Any) -> list[dict[str, Any]]:
        """Return every request a mock printed: method, path, headers and body size."""
        lines = container.logs(stderr=False).decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def mock_upstream_network(client: docker.DockerClient, *, image: str, label: str,
                          wait: Any) -> Iterator[MockUpstream]:
    """Start the network and both mocks, labelled `label`; remove them on exit."""
    tag = secrets.token_hex(3)
    labels = {label: f"egress-{tag}"}
    network = client.networks.create(
        f"orchestrate-test-upstream-{tag}", driver="bridge", internal=True, labels=labels,
        options={"com.docker.network.bridge.inhibit_ipv4": "true"},
    )
    script = MOCK_SCRIPT.read_text(encoding="utf-8")
    mocks = []
    try:
        for role in ("allowed", "other"):
            mocks.append(client.containers.run(
                image, ["python3", "-c", script], detach=True, labels=labels, network=network.name,
                name=f"orchestrate-test-mock-{role}-{tag}", user="1000:1000",
                environment={"MOCK_NAME": f"mock-{role}", "MOCK_PORT": str(MOCK_PORT)},
            ))
        addresses = []
        for mock in mocks:
            wait(mock, "mock ready")
            mock.reload()
            addresses.append(mock.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])
        yield MockUpstream(network.name, mocks[0].name, mocks[1].name, addresses[0], addresses[1], tuple(mocks))
    finally:
        for mock in mocks:
            mock.remove(force=True)
        network.remove()
