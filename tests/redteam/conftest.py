"""Fixtures of the red-team suite: the canary, the sentinel tree and one set of batch runs per runtime.

The batches of a runtime run once per session, in parallel, the first time a
test asks for that runtime; every scenario test then reads its own agent's
outcome. Like the integration tests, these fail and never skip: a runtime that
is not registered with the engine fails its tests with the command that installs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from ..integration.conftest import BASE_IMAGE, TEST_LABEL, docker_client  # noqa: F401 - a fixture
from . import hostcheck
from .batch import BatchRun, finish_batch, start_batch, write_manifest
from .scenarios import BATCHES

HERE = Path(__file__).parent
AGENTS = HERE / "agents"
CANARY_PORTS = {"tcp": 8080, "udp": 9999, "dns": [53, 5353]}
CANARY_SUBNET6 = "fd7e:5a1d:{}::/64"
# Attacks whose programs the control container runs with the network open, to show they would succeed.
CONTROL_ATTACKS = ("net-tcp", "net-udp", "net-dns", "net-icmp", "net-ipv6", "net-raw-socket")
RUNSC_INSTALL = (
    "apt-get install -y runsc, add {\"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", "
    "\"runtimeArgs\": [\"--network=none\"]}}} to /etc/docker/daemon.json, then `kill -HUP $(pidof dockerd)`"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "redteam" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@dataclass
class Canary:
    container: Any
    network: Any
    ipv4: str
    ipv6: str

    def hits(self) -> list[str]:
        text = self.container.logs().decode(errors="replace")
        return [line for line in text.splitlines() if line.startswith("hit ")]


@dataclass
class RuntimeRun:
    """Everything one runtime's batches produced, and the host-side facts around them."""

    runtime: str
    batches: dict[str, BatchRun]
    seconds: float
    sentinel_before: dict[str, str]
    sentinel_after: dict[str, str]
    source_before: dict[str, str]
    source_after: dict[str, str]
    output: Path
    runs_dir: Path
    creations: list[hostcheck.EngineObject]
    leftovers: list[str]
    canary_hits: list[str] = field(default_factory=list)

    def batch_of(self, name: str) -> BatchRun:
        for batch in self.batches.values():
            if any(item["name"] == name for item in batch.result.get("agents", [])):
                return batch
        raise AssertionError(f"no batch of {self.runtime} ran agent {name}")


@dataclass
class RedTeam:
    """The session's shared set-up and a cache of each runtime's runs."""

    client: docker.DockerClient
    root: Path
    canary: Canary
    secret: str
    home: Path
    host_file: Path
    control: dict[str, dict[str, Any]]
    control_addresses: tuple[str, str]
    runs: dict[str, RuntimeRun] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def results(self, runtime: str) -> RuntimeRun:
        if runtime in self.failures:
            pytest.fail(self.failures[runtime])
        if runtime not in self.runs:
            try:
                self.runs[runtime] = self._run(runtime)
            except Exception as exc:
                # Later tests of this runtime fail with the same message instead of running it again.
                self.failures[runtime] = f"{type(exc).__name__}: {exc}"
                raise
        return self.runs[runtime]

    def _run(self, runtime: str) -> RuntimeRun:
        runtimes = self.client.api.info().get("Runtimes") or {}
        if runtime not in runtimes:
            raise AssertionError(f"the Docker engine has no {runtime} runtime (it has {sorted(runtimes)}); "
                                 f"install and register it: {RUNSC_INSTALL}")
        project = self.root / runtime
        source = project / "src"
        output = project / "generated"
        runs_dir = project / "runs"
        shutil.copytree(AGENTS, source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "context.json").write_text(self._context(runtime), encoding="utf-8")
        environment = self._environment()

        sentinel_before = hostcheck.fingerprint(self.root / "sentinel")
        source_before = hostcheck.fingerprint(source)
        hits_before = len(self.canary.hits())
        recorder = hostcheck.CreationRecorder(self.client)
        started = time.monotonic()
        prefix = f"rt-{runtime}-{secrets.token_hex(3)}"
        batches = {}
        for batch in BATCHES:
            manifest = write_manifest(project, name=f"{prefix}-{batch}", batch=batch, runtime=runtime,
                                      source=source, output=output)
            batches[batch] = start_batch(manifest, batch=batch, runtime=runtime, runs_dir=runs_dir, cwd=project,
                                         environment=environment)
        try:
            for batch in batches.values():
                finish_batch(batch)
        finally:
            for batch in batches.values():
                if batch.process.poll() is None:
                    batch.process.kill()
                    batch.process.communicate()
        seconds = time.monotonic() - started

        run_ids = [batch.run_id for batch in batches.values()]
        leftovers = hostcheck.run_containers(self.client, run_ids)
        for container_id in leftovers:
            self.client.api.remove_container(container_id, force=True)
        return RuntimeRun(
            runtime=runtime,
            batches=batches,
            seconds=seconds,
            sentinel_before=sentinel_before,
            sentinel_after=hostcheck.fingerprint(self.root / "sentinel"),
            source_before=source_before,
            source_after=hostcheck.fingerprint(source),
            output=output,
            runs_dir=runs_dir,
            creations=recorder.stop(),
            leftovers=leftovers,
            canary_hits=self.canary.hits()[hits_before:],
        )

    def _context(self, runtime: str) -> str:
        return json.dumps({
            "runtime": runtime,
            "canary": {"ipv4": self.canary.ipv4, "ipv6": self.canary.ipv6, **CANARY_PORTS},
            "abstract_socket": f"redteam-{secrets.token_hex(4)}",
            "victim_marker": f"victim-marker-{secrets.token_hex(6)}",
            "victim_agent": "fs-victim",
            "claim_victim": "pub-claim-owner",
            "host_home": str(self.home),
            "host_file": str(self.host_file),
            # Only the prefix's hex form, so that the prefix itself appears in no file the agents can read.
            "secret_prefix_hex": hostcheck.SECRET_PREFIX.encode().hex(),
            "secret_name": hostcheck.SECRET_NAME,
            "secret_sha256": hashlib.sha256(self.secret.encode()).hexdigest(),
        }, indent=2)

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = str(HERE.parents[1])
        # orchestrate runs with the fake home and a fake secret; neither may reach an agent.
        environment["HOME"] = str(self.home)
        environment[hostcheck.SECRET_NAME] = self.secret
        if "DOCKER_HOST" not in environment and Path("/var/run/docker.sock").exists():
            environment["DOCKER_HOST"] = "unix:///var/run/docker.sock"
        return environment


def _start_canary(client: docker.DockerClient, tag: str) -> Canary:
    labels = {TEST_LABEL: f"redteam-{tag}"}
    subnet = CANARY_SUBNET6.format(secrets.token_hex(2))
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    network = client.networks.create(f"orchestrate-test-redteam-{tag}", driver="bridge", internal=True,
                                     enable_ipv6=True, ipam=ipam, labels=labels)
    script = (HERE / "canary_server.py").read_text(encoding="utf-8")
    # Root with only NET_RAW (to log ICMP) and NET_BIND_SERVICE (DNS on port 53), on the internal network.
    container = client.containers.run(
        BASE_IMAGE, ["python3", "-c", script], detach=True, labels=labels, network=network.name, user="0:0",
        cap_drop=["ALL"], cap_add=["NET_RAW", "NET_BIND_SERVICE"],
    )
    deadline = time.monotonic() + 30
    while "canary ready" not in container.logs().decode(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the canary did not start:\n{container.logs().decode(errors='replace')}")
        time.sleep(0.1)
    container.reload()
    settings = container.attrs["NetworkSettings"]["Networks"][network.name]
    return Canary(container, network, settings["IPAddress"], settings["GlobalIPv6Address"])


def _run_control(
    client: docker.DockerClient, canary: Canary, folder: Path, context: str
) -> tuple[dict[str, Any], tuple[str, str]]:
    """Run the network attacks in a container on the canary's network, where they must succeed."""

    source = folder / "src"
    output = folder / "out"
    shutil.copytree(AGENTS, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "context.json").write_text(context, encoding="utf-8")
    output.mkdir()
    output.chmod(0o777)
    script = " && ".join(
        f"ORCHESTRATE_AGENT={name} python3 /workspace/src/attack.py {name}" for name in CONTROL_ATTACKS
    )
    container = client.containers.create(
        BASE_IMAGE, ["sh", "-c", script], labels={TEST_LABEL: "redteam-control"}, network=canary.network.name,
        user="0:0", cap_drop=["ALL"], cap_add=["NET_RAW"],
        volumes={str(source): {"bind": "/workspace/src", "mode": "ro"},
                 str(output): {"bind": "/workspace/output", "mode": "rw"}},
    )
    try:
        container.start()
        container.reload()
        settings = container.attrs["NetworkSettings"]["Networks"][canary.network.name]
        addresses = (settings["IPAddress"], settings["GlobalIPv6Address"])
        status = container.wait(timeout=120)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    if status.get("StatusCode") != 0:
        raise AssertionError(f"the control container failed: {status}\n{logs}")
    verdicts = {name: json.loads((output / name / "verdict.json").read_text()) for name in CONTROL_ATTACKS}
    return verdicts, addresses


@pytest.fixture(scope="session")
def redteam(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient  # noqa: F811 - the fixture
) -> Iterator[RedTeam]:
    root = tmp_path_factory.mktemp("redteam")
    tag = secrets.token_hex(3)
    secret = f"{hostcheck.SECRET_PREFIX}{secrets.token_hex(16)}"
    home, host_file = hostcheck.make_sentinel(root / "sentinel", secret)
    canary = _start_canary(docker_client, tag)
    try:
        team = RedTeam(client=docker_client, root=root, canary=canary, secret=secret, home=home,
                       host_file=host_file, control={}, control_addresses=("", ""))
        team.control, team.control_addresses = _run_control(
            docker_client, canary, root / "control", team._context("runc"))
        yield team
    finally:
        canary.container.remove(force=True)
        _remove_network(docker_client, canary.network)


def _remove_network(client: docker.DockerClient, network: Any) -> None:
    # Docker 20.10 can leave a removed container's endpoint behind; disconnect it by name first.
    try:
        network.reload()
        for item in (network.attrs.get("Containers") or {}).values():
            subprocess.run(["docker", "network", "disconnect", "-f", network.name, item["Name"]],
                           capture_output=True, timeout=30, check=False)
        network.remove()
    except docker.errors.NotFound:
        pass
