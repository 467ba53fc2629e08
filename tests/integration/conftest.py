"""Fixtures for tests that drive a real Docker engine.

These tests never skip: without a reachable engine or the base image they
fail with the command that fixes it, because a skipped isolation test proves
nothing. Every container and network a test makes carries the label
`orchestrate.test`, and teardown removes them by that label and by the run
label of the test's own manifest name, never by a name pattern.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from .mock_upstream import MockUpstream, mock_upstream_network

BASE_IMAGE = "orchestrate/base:latest"
TEST_LABEL = "orchestrate.test"
SCRIPTS = Path(__file__).parent / "scripts"
ORCHESTRATE = [sys.executable, "-m", "orchestrator"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine is not reachable ({exc}); run scripts/quickstart.sh first")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing; build it with `orchestrate images build`")
    yield client
    client.close()


@dataclass
class Project:
    """A scratch project: a source folder, a runs folder and a manifest name unique to one test."""

    root: Path
    name: str
    client: docker.DockerClient

    @property
    def source(self) -> Path:
        return self.root / "src"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def manifest(self, agents: list[dict[str, Any]], **fields: Any) -> Path:
        document = {"version": 1, "name": self.name, "source": str(self.source), "agents": agents}
        document.update(fields)
        path = self.root / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    def orchestrate(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ORCHESTRATE, *args], capture_output=True, text=True, timeout=timeout,
            env=env or _clean_environment(), cwd=self.root, check=False,
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*ORCHESTRATE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or _clean_environment(), cwd=self.root,
        )

    def run_json(self, manifest: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        completed = self.orchestrate("run", str(manifest), "--runs-dir", str(self.runs), "--json", *extra, env=env)
        try:
            document = run_result(completed.stdout)
        except (json.JSONDecodeError, IndexError):
            pytest.fail(
                f"orchestrate run printed no JSON (exit {completed.returncode}):\n"
                f"{completed.stdout}\n{completed.stderr}"
            )
        return completed.returncode, document

    def containers(self, *, all_states: bool = True) -> list[Any]:
        """Return the containers of every run of this project's manifest name."""
        return project_containers(self.client, self.name, all_states=all_states)

    def wait_for_running(self, count: int, *, deadline: float = 60) -> list[Any]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            running = [item for item in self.containers() if item.status == "running"]
            if len(running) >= count:
                return running
            time.sleep(0.1)
        pytest.fail(f"{count} running container(s) of {self.name} did not appear within {deadline} s")


def project_containers(client: docker.DockerClient, prefix: str, *, all_states: bool = True) -> list[Any]:
    """Return the containers whose run id starts with `prefix`.

    The SDK's containers.list inspects each container after listing it, and it raises when
    orchestrate removes one in between. So this lists with the low-level call and skips those.
    """
    listed = client.api.containers(all=all_states, filters={"label": "orchestrate.run"})
    found = []
    for item in listed:
        if not (item.get("Labels") or {}).get("orchestrate.run", "").startswith(prefix + "-"):
            continue
        try:
            found.append(client.containers.get(item["Id"]))
        except docker.errors.NotFound:
            continue
    return found


def _clean_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return environment


@pytest.fixture
def project(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Project]:
    scratch = Project(root=tmp_path, name=f"t-{secrets.token_hex(4)}", client=docker_client)
    scratch.source.mkdir()
    shutil.copy(SCRIPTS / "probe.py", scratch.source / "probe.py")
    yield scratch
    for container in scratch.containers():
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # orchestrate removed it first.


@pytest.fixture(scope="session")
def standin_image(docker_client: docker.DockerClient) -> str:
    """The tag of the test image whose claude, copilot, codex and aider are the stand-in CLI."""
    from .standin import ensure_standin_image

    return ensure_standin_image(docker_client)


@pytest.fixture(scope="session")
def mock_upstream(docker_client: docker.DockerClient) -> Iterator[MockUpstream]:
    """Two mock model APIs on an internal network of the test's own, for the egress broker's upstream side."""
    with mock_upstream_network(docker_client, image=BASE_IMAGE, label=TEST_LABEL, wait=_wait_for_log) as upstream:
        yield upstream


@pytest.fixture(scope="session")
def canary(docker_client: docker.DockerClient) -> Iterator[str]:
    """Start the canary server on an internal network of the test's own; yield its address."""
    labels = {TEST_LABEL: "canary"}
    network = docker_client.networks.create(
        f"orchestrate-test-canary-{secrets.token_hex(3)}", driver="bridge", internal=True, labels=labels
    )
    script = (SCRIPTS / "canary.py").read_text(encoding="utf-8")
    container = docker_client.containers.run(
        BASE_IMAGE, ["python3", "-c", script], detach=True, labels=labels, network=network.name,
        user="1000:1000",
    )
    try:
        _wait_for_log(container, "canary ready")
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        yield address
    finally:
        container.remove(force=True)
        network.remove()


@pytest.fixture(scope="session")
def canary_network(docker_client: docker.DockerClient, canary: str) -> str:
    networks = docker_client.networks.list(filters={"label": f"{TEST_LABEL}=canary"})
    return str(networks[0].name)


def _wait_for_log(container: Any, text: str, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if text in container.logs().decode(errors="replace"):
            return
        time.sleep(0.1)
    pytest.fail(f"container {container.short_id} did not print {text!r} within {deadline} s")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def agent_workspace(result: dict[str, Any], agent: str) -> Path:
    for item in result["agents"]:
        if item["name"] == agent:
            return Path(item["workspace"])
    raise AssertionError(f"agent {agent} is not in the result")


WaitCondition = Callable[[], bool]


def run_result(stdout: str) -> dict[str, Any]:
    """Return the result of `orchestrate run --json`: its last JSON line (the lines before are events)."""
    document: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return document
