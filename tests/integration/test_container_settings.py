"""`docker inspect` of a running agent shows every hardening setting and exactly the planned mounts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import Project, read_json, run_result


@pytest.fixture
def running_agent(project: Project) -> Any:
    """Start a run whose agent waits for a `go` file in its workspace; yield its inspect data."""
    manifest = project.manifest(
        [{
            "name": "waiter",
            "command": ["sh", "-c", "while [ ! -f go ]; do sleep 0.1; done; echo done > result.txt"],
            "resources": {"cpus": 0.5, "memory": "128m", "pids": 64, "tmp": "32m", "home": "16m"},
            "timeout": "2m",
        }]
    )
    process = project.start("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    try:
        container = project.wait_for_running(1)[0]
        container.reload()
        plan = read_json(project.runs / container.labels["orchestrate.run"] / "plan.json")
        yield {"inspect": container.attrs, "plan": plan, "process": process, "project": project}
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=60)


def test_network_none(running_agent: dict[str, Any]) -> None:
    host = running_agent["inspect"]["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert set(running_agent["inspect"]["NetworkSettings"]["Networks"]) <= {"none"}
    assert running_agent["inspect"]["Config"]["NetworkDisabled"] is True


def test_capabilities_dropped(running_agent: dict[str, Any]) -> None:
    host = running_agent["inspect"]["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["Privileged"] is False


def test_no_new_privileges_and_default_seccomp(running_agent: dict[str, Any]) -> None:
    options = running_agent["inspect"]["HostConfig"]["SecurityOpt"]
    assert "no-new-privileges:true" in options
    assert not any(option.startswith("seccomp=unconfined") for option in options)


def test_user_not_root(running_agent: dict[str, Any]) -> None:
    user = running_agent["inspect"]["Config"]["User"]
    expected = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    assert user == expected


def test_read_only_root_and_tmpfs(running_agent: dict[str, Any]) -> None:
    host = running_agent["inspect"]["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/home/agent"}
    assert "size=33554432" in host["Tmpfs"]["/tmp"]
    assert "size=16777216" in host["Tmpfs"]["/home/agent"]


def test_limits_applied(running_agent: dict[str, Any]) -> None:
    host = running_agent["inspect"]["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 128 * 1024**2
    assert host["MemorySwap"] == 128 * 1024**2
    assert host["PidsLimit"] == 64


def test_labels_name_run_and_agent(running_agent: dict[str, Any]) -> None:
    labels = running_agent["inspect"]["Config"]["Labels"]
    assert labels["orchestrate.run"] == running_agent["plan"]["run_id"]
    assert labels["orchestrate.agent"] == "waiter"


def test_env_holds_only_fixed_names(running_agent: dict[str, Any]) -> None:
    names = {item.partition("=")[0] for item in running_agent["inspect"]["Config"]["Env"]}
    # PATH, LANG and the Python settings come from the image itself.
    assert names <= {"HOME", "ORCHESTRATE_RUN", "ORCHESTRATE_AGENT", "PATH", "LANG",
                     "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


def test_mounts_exactly_as_planned(running_agent: dict[str, Any]) -> None:
    planned = running_agent["plan"]["agents"][0]["container"]["mounts"]
    # Read-only tmpfs mounts (the masks) are listed by inspect; writable ones are in HostConfig.Tmpfs.
    expected = {
        (item["target"], item["source"] or "", item["read_only"])
        for item in planned
        if item["type"] == "bind" or item["read_only"]
    }
    actual = {
        (item["Destination"], item["Source"], not item["RW"])
        for item in running_agent["inspect"]["Mounts"]
    }
    assert actual == expected


def test_source_read_only_workspace_writable(running_agent: dict[str, Any]) -> None:
    by_target = {item["Destination"]: item for item in running_agent["inspect"]["Mounts"]}
    assert by_target["/workspace/src"]["RW"] is False
    assert by_target["/workspace/output"]["RW"] is True


def test_no_sensitive_mount(running_agent: dict[str, Any]) -> None:
    sources = [item["Source"] for item in running_agent["inspect"]["Mounts"]]
    assert not any("docker.sock" in source for source in sources)
    assert str(Path.home()) not in sources
    assert not any(source in ("/", "/etc", "/proc", "/sys", "/run", "/var/run") for source in sources)


def test_agent_finishes_when_released(running_agent: dict[str, Any]) -> None:
    project: Project = running_agent["project"]
    run_id = running_agent["plan"]["run_id"]
    workspace = project.runs / run_id / "agents" / "waiter"
    (workspace / "go").write_text("go\n")

    stdout, _stderr = running_agent["process"].communicate(timeout=60)
    result = run_result(stdout)
    assert running_agent["process"].returncode == 0
    assert result["agents"][0]["state"] == "succeeded"
    assert (workspace / "result.txt").read_text() == "done\n"
    assert project.containers() == []
