"""The benchmarks' shared helpers: baseline container arguments, /proc readers and target records."""

from __future__ import annotations

import os
from typing import Any

import docker
import pytest

from bench.common import cli_run_arguments, cpu_seconds, memory_kib, sdk_create_arguments, target
from orchestrator.plan import ContainerSpec
from orchestrator.runtime.docker import _host_config_arguments

LABEL = "orchestrate.bench=unit"


def spec_json() -> dict[str, Any]:
    """Return a container spec in the shape `orchestrate plan --json` prints, built by the product's own model."""
    spec = ContainerSpec.model_validate({
        "name": "orchestrate-run-1-a0",
        "hostname": "a0",
        "image": "orchestrate/base:latest",
        "image_id": "sha256:" + "ab" * 32,
        "entrypoint": ["/bin/sh", "-c", "wrapper script", "orchestrate-lifeline"],
        "command": ["sleep", "600"],
        "user": "1000:1000",
        "workdir": "/workspace/output",
        "env_names": [],
        "fixed_env": {"HOME": "/home/agent", "ORCHESTRATE_AGENT": "a0"},
        "mounts": [
            {"type": "bind", "target": "/workspace/src", "read_only": True, "source": "/src", "purpose": "source"},
            {"type": "bind", "target": "/workspace/output", "read_only": False, "source": "/ws", "purpose": "ws"},
            {"type": "tmpfs", "target": "/workspace/shared/.orchestrate", "read_only": True, "size": 4096,
             "purpose": "mask"},
            {"type": "tmpfs", "target": "/tmp", "read_only": False, "size": 1024, "purpose": "scratch"},
        ],
        "limits": {"cpus": 1.5, "memory": 268435456, "pids": 128},
        "labels": {"orchestrate.run": "run-1"},
    })
    return spec.model_dump(mode="json")


def test_sdk_host_config_matches_product_runtime() -> None:
    api = docker.APIClient(version="1.41")
    spec = spec_json()
    expected = api.create_host_config(**_host_config_arguments(ContainerSpec.model_validate(spec)))

    created = sdk_create_arguments(api, spec, LABEL)

    assert created["host_config"] == expected


def test_sdk_arguments_keep_command_and_open_input() -> None:
    created = sdk_create_arguments(docker.APIClient(version="1.41"), spec_json(), LABEL)

    assert created["entrypoint"] == ["/bin/sh", "-c", "wrapper script", "orchestrate-lifeline"]
    assert created["command"] == ["sleep", "600"]
    assert created["stdin_open"] is True
    assert created["labels"] == {"orchestrate.bench": "unit"}
    assert created["image"] == "sha256:" + "ab" * 32


def test_cli_arguments_carry_every_hardening_flag() -> None:
    arguments = cli_run_arguments(spec_json(), LABEL)

    for flag in ("--read-only", "--init", "--interactive", "--cap-drop=ALL", "--no-healthcheck"):
        assert flag in arguments
    assert arguments[arguments.index("--network") + 1] == "none"
    assert arguments[arguments.index("--security-opt") + 1] == "no-new-privileges:true"
    assert arguments[arguments.index("--cpus") + 1] == "1.5"
    assert arguments[arguments.index("--memory-swap") + 1] == "268435456"
    assert arguments[arguments.index("--pids-limit") + 1] == "128"
    assert arguments[arguments.index("--user") + 1] == "1000:1000"


def test_cli_arguments_mount_like_the_runtime() -> None:
    arguments = cli_run_arguments(spec_json(), LABEL)
    mounts = [arguments[index + 1] for index, word in enumerate(arguments) if word == "--mount"]
    tmpfs = [arguments[index + 1] for index, word in enumerate(arguments) if word == "--tmpfs"]

    assert "type=bind,source=/src,target=/workspace/src,readonly,bind-propagation=rprivate" in mounts
    assert "type=bind,source=/ws,target=/workspace/output,bind-propagation=rprivate" in mounts
    assert "type=tmpfs,target=/workspace/shared/.orchestrate,tmpfs-size=4096,readonly" in mounts
    assert tmpfs == ["/tmp:rw,nosuid,nodev,size=1024,uid=1000,gid=1000,mode=0700"]


def test_cli_arguments_end_with_entrypoint_and_command() -> None:
    arguments = cli_run_arguments(spec_json(), LABEL)

    assert arguments[arguments.index("--entrypoint") + 1] == "/bin/sh"
    assert arguments[-6:] == ["sha256:" + "ab" * 32, "-c", "wrapper script", "orchestrate-lifeline", "sleep", "600"]


def test_cli_arguments_drop_orchestrate_labels() -> None:
    arguments = cli_run_arguments(spec_json(), LABEL)
    labels = [arguments[index + 1] for index, word in enumerate(arguments) if word == "--label"]

    assert labels == [LABEL]


def test_cpu_seconds_grow_with_work() -> None:
    before = cpu_seconds(os.getpid())
    total = 0
    while cpu_seconds(os.getpid()) - before < 0.02:
        total += sum(range(10_000))

    assert cpu_seconds(os.getpid()) > before


def test_memory_kib_reads_peak_and_current() -> None:
    peak = memory_kib(os.getpid(), "VmHWM")
    current = memory_kib(os.getpid(), "VmRSS")

    assert peak is not None and current is not None
    assert peak >= current > 0


def test_memory_kib_of_missing_process_is_none() -> None:
    assert memory_kib(2**22 + 12345) is None


@pytest.mark.parametrize(("measured", "below", "met"), [(0.2, True, True), (0.4, True, False),
                                                      (0.4, False, True), (0.2, False, False), (None, True, False)])
def test_target_compares_against_limit(measured: float | None, below: bool, met: bool) -> None:
    assert target("t", measured, 0.3, unit="s", below=below)["pass"] is met
