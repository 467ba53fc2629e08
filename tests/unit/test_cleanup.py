"""`orchestrate cleanup RUN` without Docker: what it removes of a run whose process was killed."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, cast

from orchestrator.cleanup import clean
from orchestrator.control_protocol import socket_path
from orchestrator.plan import LABEL_AGENT, LABEL_RUN
from orchestrator.runtime.docker import DockerRuntime

RUN = "killed-20261205-021621-c5036e"


class FakeRuntime:
    """The part of the runtime that cleanup uses: labelled containers and networks that can be removed."""

    def __init__(self, containers: dict[str, dict[str, str]]) -> None:
        self.containers = containers
        self.removed: list[str] = []

    def list_labelled(self, labels: dict[str, str | None]) -> list[str]:
        return [cid for cid, own in self.containers.items() if own.get(LABEL_RUN) == labels[LABEL_RUN]]

    def list_labelled_networks(self, labels: dict[str, str | None]) -> dict[str, dict[str, str]]:
        return {}

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"Config": {"Labels": self.containers[container_id]}}

    def remove(self, container_id: str) -> None:
        self.removed.append(container_id)


def killed_run(runs_root: Path) -> Path:
    """Leave a run folder as a SIGKILLed run process does: no result, and its bound control socket."""
    folder = runs_root / RUN
    path = socket_path(folder)
    path.parent.mkdir(parents=True, mode=0o700)
    # Bound by a relative name, since a pytest temporary path is longer than sun_path allows.
    previous_cwd = Path.cwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path.name)
    finally:
        os.chdir(previous_cwd)
    assert path.is_socket()
    return folder


def test_cleanup_removes_stale_socket(tmp_path: Path) -> None:
    folder = killed_run(tmp_path)
    runtime = FakeRuntime({})

    report = clean(cast(DockerRuntime, runtime), run_id=RUN, runs_root=tmp_path, remove_files=False)

    assert not socket_path(folder).exists()
    assert not socket_path(folder).parent.exists()
    assert f"removed the stale control socket {socket_path(folder)}" in report


def test_cleanup_names_broker_container(tmp_path: Path) -> None:
    killed_run(tmp_path)
    runtime = FakeRuntime({"a" * 64: {LABEL_RUN: RUN, LABEL_AGENT: "one"}, "b" * 64: {LABEL_RUN: RUN}})

    report = clean(cast(DockerRuntime, runtime), run_id=RUN, runs_root=tmp_path, remove_files=False)

    assert f"removed container {'a' * 12} (run {RUN}, agent one)" in report
    assert f"removed container {'b' * 12} (run {RUN}, the egress broker)" in report
    assert "None" not in report
