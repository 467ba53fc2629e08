"""Reading enforced limits back from cgroup files, and judging them against the plan.

Each test lays out a fake /proc and a fake cgroup tree in tmp_path, in the
cgroup v1 layout (one hierarchy per controller) or the v2 layout (one unified
hierarchy with cgroup.controllers), and points the reader at them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.limits import is_dropped_limit, limit_problem
from orchestrator.plan import AgentPlan, RunPlan
from orchestrator.runtime import EffectiveLimits
from orchestrator.runtime.cgroups import parse_membership, read_effective_limits

from .conftest import agent, manifest_data

PID = 4242
CONTAINER_CGROUP = "/system.slice/docker-0123abcd.scope"
V1_UNLIMITED = 9223372036854771712
PLANNED_PIDS = 128
PLANNED_MEMORY = 256 * 1024**2


class FakeHost:
    """A fake /proc and cgroup root in a folder, filled by the test."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.cgroup_root = root / "cgroup"
        self.proc.mkdir()
        self.cgroup_root.mkdir()

    def membership(self, text: str, pid: int = PID) -> None:
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "cgroup").write_text(text, encoding="utf-8")

    def file(self, relative: str, text: str) -> None:
        path = self.cgroup_root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def v2(self, *, pids: str | None, memory: str | None) -> None:
        self.membership(f"0::{CONTAINER_CGROUP}\n")
        self.file(f"{CONTAINER_CGROUP}/cgroup.controllers", "cpuset cpu io memory pids\n")
        if pids is not None:
            self.file(f"{CONTAINER_CGROUP}/pids.max", pids + "\n")
        if memory is not None:
            self.file(f"{CONTAINER_CGROUP}/memory.max", memory + "\n")

    def v1(self, *, pids: str | None, memory: str | None) -> None:
        # A hybrid host also lists the unified hierarchy as "0::", but without the pids controller there.
        self.membership(
            f"12:pids:{CONTAINER_CGROUP}\n"
            f"11:memory:{CONTAINER_CGROUP}\n"
            f"4:cpu,cpuacct:{CONTAINER_CGROUP}\n"
            f"1:name=systemd:{CONTAINER_CGROUP}\n"
            "0::/system.slice/containerd.service\n"
        )
        if pids is not None:
            self.file(f"pids{CONTAINER_CGROUP}/pids.max", pids + "\n")
        if memory is not None:
            self.file(f"memory{CONTAINER_CGROUP}/memory.limit_in_bytes", memory + "\n")

    def read(self, pid: int = PID) -> EffectiveLimits:
        return read_effective_limits(pid, cgroup_root=self.cgroup_root, proc=self.proc)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def test_v2_limits_read(host: FakeHost) -> None:
    host.v2(pids="128", memory="268435456")

    assert host.read() == EffectiveLimits(pids=128, memory=268435456)


def test_v2_max_reads_zero(host: FakeHost) -> None:
    host.v2(pids="max", memory="max")

    assert host.read() == EffectiveLimits(pids=0, memory=0)


def test_v2_missing_pids_file_reads_none(host: FakeHost) -> None:
    host.v2(pids=None, memory="268435456")

    assert host.read() == EffectiveLimits(pids=None, memory=268435456)


def test_v2_garbage_value_reads_none(host: FakeHost) -> None:
    host.v2(pids="lots", memory="268435456")

    assert host.read().pids is None


def test_v1_limits_read(host: FakeHost) -> None:
    host.v1(pids="128", memory="268435456")

    assert host.read() == EffectiveLimits(pids=128, memory=268435456)


def test_v1_unlimited_memory_reads_zero(host: FakeHost) -> None:
    host.v1(pids="128", memory=str(V1_UNLIMITED))

    assert host.read().memory == 0


def test_v1_max_pids_reads_zero(host: FakeHost) -> None:
    host.v1(pids="max", memory="268435456")

    assert host.read().pids == 0


def test_v1_without_pids_controller_reads_none(host: FakeHost) -> None:
    host.membership(f"11:memory:{CONTAINER_CGROUP}\n")
    host.file(f"memory{CONTAINER_CGROUP}/memory.limit_in_bytes", "268435456\n")

    assert host.read() == EffectiveLimits(pids=None, memory=268435456)


def test_hybrid_host_prefers_v1_pids(host: FakeHost) -> None:
    # The unified hierarchy exists and contains other numbers, but pids is a v1 controller here.
    host.v1(pids="128", memory="268435456")
    host.file("/system.slice/containerd.service/cgroup.controllers", "memory\n")
    host.file("/system.slice/containerd.service/pids.max", "max\n")
    host.file("/system.slice/containerd.service/memory.max", "max\n")

    assert host.read() == EffectiveLimits(pids=128, memory=268435456)


def test_missing_process_reads_none(host: FakeHost) -> None:
    host.v2(pids="128", memory="268435456")

    assert host.read(pid=PID + 1) == EffectiveLimits(pids=None, memory=None)


@pytest.mark.parametrize("pid", [0, -1])
def test_non_positive_pid_reads_none(host: FakeHost, pid: int) -> None:
    assert host.read(pid=pid) == EffectiveLimits(pids=None, memory=None)


def test_membership_maps_each_controller() -> None:
    paths = parse_membership("4:cpu,cpuacct:/a\n0::/b\nnot a line\n")

    assert paths == {"cpu": "/a", "cpuacct": "/a", "": "/b"}


@pytest.fixture
def planned_agent(plan_for: Callable[..., RunPlan], source_dir: Path) -> AgentPlan:
    resources = {"pids": PLANNED_PIDS, "memory": "256m"}
    plan = plan_for(manifest_data(source_dir, agents=[agent("reader", resources=resources)]))
    return plan.agents[0]


# Each case: pids and memory read from the cgroup, and the start of the problem (None: no problem).
LIMIT_CASES = [
    pytest.param(PLANNED_PIDS, PLANNED_MEMORY, None, id="exact"),
    pytest.param(PLANNED_PIDS, PLANNED_MEMORY - 4096, None, id="memory-rounded-to-page"),
    pytest.param(PLANNED_PIDS, PLANNED_MEMORY - 64 * 1024, None, id="memory-64k-below"),
    pytest.param(None, PLANNED_MEMORY, "unverified limits", id="pids-unreadable"),
    pytest.param(PLANNED_PIDS, None, "unverified limits", id="memory-unreadable"),
    pytest.param(0, PLANNED_MEMORY, "pids limit not in force: planned 128, cgroup has no limit", id="pids-unlimited"),
    pytest.param(64, PLANNED_MEMORY, "pids limit not in force: planned 128, cgroup has 64", id="pids-other"),
    pytest.param(
        PLANNED_PIDS,
        0,
        f"memory limit not in force: planned {PLANNED_MEMORY}, cgroup has no limit",
        id="memory-unlimited",
    ),
    pytest.param(PLANNED_PIDS, PLANNED_MEMORY + 4096, "memory limit not in force", id="memory-above"),
    pytest.param(PLANNED_PIDS, PLANNED_MEMORY - 64 * 1024 - 1, "memory limit not in force", id="memory-far-below"),
]


@pytest.mark.parametrize(("pids", "memory", "problem"), LIMIT_CASES)
def test_limit_problem(planned_agent: AgentPlan, pids: int | None, memory: int | None, problem: str | None) -> None:
    found = limit_problem(planned_agent, pids, memory)

    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem), found


# Warnings in the words of Docker's engine. True means the limit was dropped and the agent must not start.
WARNING_CASES = [
    pytest.param(
        "Your kernel does not support swap limit capabilities or the cgroup is not mounted. "
        "Memory limited without swap.",
        False,
        id="swap-accepted",
    ),
    pytest.param(
        "Your kernel does not support pids limit capabilities or the cgroup is not mounted. PIDs limit discarded.",
        True,
        id="pids-discarded",
    ),
    pytest.param(
        "Your kernel does not support memory limit capabilities or the cgroup is not mounted. Limitation discarded.",
        True,
        id="memory-discarded",
    ),
    pytest.param(
        "Your kernel does not support CPU cfs period/quota or the cgroup is not mounted. Period/quota discarded.",
        True,
        id="cpu-quota-discarded",
    ),
    pytest.param("Your kernel does not support cgroup namespaces.", True, id="unsupported-feature-rejected"),
    pytest.param("YOUR KERNEL DOES NOT SUPPORT PIDS LIMIT. PIDS LIMIT DISCARDED.", True, id="upper-case"),
    pytest.param("IPv4 forwarding is disabled. Networking will not work.", False, id="unrelated"),
]


@pytest.mark.parametrize(("warning", "dropped"), WARNING_CASES)
def test_dropped_limit_warning(warning: str, dropped: bool) -> None:
    assert is_dropped_limit(warning) is dropped
