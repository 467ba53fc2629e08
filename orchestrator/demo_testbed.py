"""The demo's own test bed: an internal Docker network, a canary server on it and a control container.

Everything here carries the label `orchestrate.demo=<demo id>` and is removed
by that label at the end, Ctrl-C included. The network is internal, so
nothing on it can reach beyond the machine, and its IPv6 prefix is a random
unique local one (fd00::/8), which no router forwards.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import IPAMConfig, IPAMPool

from . import demo_canary, demo_probe
from .errors import EnvironmentProblem, ImageMissing

log = logging.getLogger(__name__)

LABEL_DEMO = "orchestrate.demo"
DEMO_IMAGE = "orchestrate/base:latest"
# The base image's unprivileged user; the canary and the control need no privilege either.
DEMO_USER = "1000:1000"
READY_TIMEOUT = 20.0
CONTROL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Canary:
    network: str
    ipv4: str
    # The canary's IPv6 address, with a "%eth0" scope when it is only a link-local one.
    ipv6: str | None


def script_source(module: Any) -> str:
    return Path(module.__file__).read_text(encoding="utf-8")


class TestBed:
    """Creates the demo's network and containers, and removes every one of them in `remove`."""

    def __init__(self, client: docker.DockerClient, demo_id: str) -> None:
        self.client = client
        self.demo_id = demo_id
        self.labels = {LABEL_DEMO: demo_id}

    def check_image(self) -> None:
        try:
            self.client.images.get(DEMO_IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(f"{DEMO_IMAGE} is missing; build it with `orchestrate images build`") from exc

    def start_canary(self) -> Canary:
        network = self._create_network()
        try:
            container = self.client.containers.run(
                DEMO_IMAGE, ["python3", "-c", script_source(demo_canary)], detach=True, labels=self.labels,
                network=network, user=DEMO_USER, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                name=f"orchestrate-demo-{self.demo_id}-canary",
            )
        except docker.errors.APIError as exc:
            raise EnvironmentProblem(f"the demo's canary container could not start: {exc}") from exc
        self._wait_for_output(container, "canary ready")
        container.reload()
        endpoint = container.attrs["NetworkSettings"]["Networks"][network]
        ipv6 = endpoint.get("GlobalIPv6Address") or _link_local(int(container.attrs["State"]["Pid"]))
        return Canary(network=network, ipv4=str(endpoint["IPAddress"]), ipv6=ipv6 or None)

    def _create_network(self) -> str:
        name = f"orchestrate-demo-{self.demo_id}"
        # A random /64 in fd00::/8, so that two demos at once do not ask for the same prefix.
        prefix = "fd" + secrets.token_hex(5)
        subnet = f"{prefix[0:4]}:{prefix[4:8]}:{prefix[8:12]}::/64"
        try:
            self.client.networks.create(
                name, driver="bridge", internal=True, labels=self.labels, enable_ipv6=True,
                ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]),
            )
        except docker.errors.APIError as exc:
            # An engine without IPv6 support still gives the canary a link-local IPv6 address.
            log.debug("the demo network with IPv6 could not be created (%s); creating it with IPv4 only", exc)
            try:
                self.client.networks.create(name, driver="bridge", internal=True, labels=self.labels)
            except docker.errors.APIError as second:
                raise EnvironmentProblem(f"the demo's network {name} could not be created: {second}") from second
        return name

    def _wait_for_output(self, container: Any, text: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if text in container.logs().decode(errors="replace"):
                return
            time.sleep(0.05)
        raise EnvironmentProblem(
            f"the demo's canary container {container.short_id} did not print {text!r} within {READY_TIMEOUT:g} s; "
            f"its output: {container.logs().decode(errors='replace')[-500:]!r}"
        )

    def run_control(self, canary: Canary) -> list[dict[str, Any]]:
        """Run the probe's network attempts from a container on the canary's network; return its results."""
        command = ["python3", "-c", script_source(demo_probe), "--network-only", "--canary", canary.ipv4]
        if canary.ipv6:
            command += ["--canary6", canary.ipv6]
        container = self.client.containers.run(
            DEMO_IMAGE, command, detach=True, labels=self.labels, network=canary.network, user=DEMO_USER,
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
            name=f"orchestrate-demo-{self.demo_id}-control",
        )
        try:
            container.wait(timeout=CONTROL_TIMEOUT)
            output = container.logs(stderr=False).decode(errors="replace")
        finally:
            container.remove(force=True)
        return parse_lines(output)

    def remove(self) -> list[str]:
        """Remove every container and network of this demo; return what could not be removed."""
        problems = []
        label = f"{LABEL_DEMO}={self.demo_id}"
        for item in self.client.api.containers(all=True, filters={"label": label}):
            try:
                self.client.api.remove_container(item["Id"], force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                problems.append(f"container {str(item['Id'])[:12]}: {exc}")
        for network in self.client.api.networks(filters={"label": label}):
            try:
                self.client.api.remove_network(network["Id"])
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                problems.append(f"network {network.get('Name')}: {exc}")
        return problems


def _link_local(pid: int) -> str | None:
    """Return the canary's link-local IPv6 address on eth0, read from the host, or None."""
    try:
        lines = Path(f"/proc/{pid}/net/if_inet6").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5] == "eth0" and fields[0].startswith("fe80"):
            groups = [fields[0][index:index + 4] for index in range(0, 32, 4)]
            return ":".join(groups) + "%eth0"
    return None


def parse_lines(output: str) -> list[dict[str, Any]]:
    """Parse the probe's JSON lines; other lines (a traceback) are skipped."""
    results = []
    for line in output.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "name" in document and "ok" in document:
            results.append(document)
    return results
