"""The checks of `orchestrate validate` on synthesized inspect data and /proc texts.

`hardened_view` writes down what the kernel shows for a container made from
the plan: no capability, NoNewPrivs 1, seccomp filter mode, only `lo`, no
route, and every planned mount with its mode. Each test breaks one thing and
expects exactly the checks that see it to fail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan import ContainerSpec, RunPlan
from orchestrator.procview import ProcessStatus, ProcView
from orchestrator.runtime import EffectiveLimits
from orchestrator.validate_checks import Check, check_container

from .conftest import agent, manifest_data
from .test_posture import engine_inspect

PlanFor = Callable[..., RunPlan]
HOMES = [Path("/home/alice")]

# The kernel pads these columns wider; the parser splits on whitespace and the first colon.
NET_DEV = (
    "Inter-|   Receive                            |  Transmit\n"
    " face |bytes    packets errs drop fifo frame |bytes    packets errs drop fifo colls\n"
    "    lo:       0       0    0    0    0     0        0       0    0    0    0     0\n"
)
NET_DEV_ETH0 = NET_DEV + "  eth0:    1026      13    0    0    0     0        0       0    0    0    0     0\n"
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
DEFAULT_ROUTE = "eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
IF_INET6 = "00000000000000000000000000000001 01 80 10 80       lo\n"
IPV6_LO_ROUTE = (
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n"
)
IDENTITY_MAP = "         0          0 4294967295\n"


@pytest.fixture
def spec(plan_for: PlanFor, source_dir: Path) -> ContainerSpec:
    resources = {"cpus": 0.5, "memory": "512m", "pids": 128}
    plan = plan_for(manifest_data(source_dir, agents=[agent("reader", resources=resources)]))
    return plan.agents[0].container


def mountinfo(spec: ContainerSpec, *, root_mode: str = "ro", extra: str = "") -> str:
    lines = [
        f"76 52 0:40 / / {root_mode},relatime master:2 - overlay overlay rw,lowerdir=/l",
        "77 76 0:43 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw",
        "78 76 0:44 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755",
        "80 76 0:46 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro",
        "93 76 254:0 /usr/bin/tini-static /usr/sbin/docker-init ro,relatime - ext4 /dev/vda rw",
        "98 76 254:0 /var/lib/docker/containers/c0ffee/hostname /etc/hostname ro,relatime - ext4 /dev/vda rw",
    ]
    for index, mount in enumerate(spec.mounts):
        mode = "ro" if mount.read_only else "rw"
        if mount.type == "bind":
            lines.append(f"{100 + index} 76 254:0 {mount.source} {mount.target} {mode},relatime - ext4 /dev/vda rw")
        else:
            lines.append(f"{100 + index} 76 0:5{index} / {mount.target} {mode},nosuid,nodev - tmpfs tmpfs rw")
    return "\n".join(lines) + "\n" + extra


def status(pid: int, *, uid: int = 1000, cap_bounding: int = 0, no_new_privs: str = "1",
           seccomp: str = "2") -> ProcessStatus:
    return ProcessStatus(pid=pid, uids=(uid,) * 4, cap_effective=0, cap_permitted=0, cap_bounding=cap_bounding,
                         no_new_privs=no_new_privs, seccomp=seccomp)


def hardened_view(spec: ContainerSpec) -> ProcView:
    limits = spec.limits
    return ProcView(
        pid=4242,
        processes=(status(4242), status(4250)),
        net_dev=NET_DEV,
        net_route=ROUTE_HEADER,
        if_inet6=IF_INET6,
        ipv6_route=IPV6_LO_ROUTE,
        mountinfo=mountinfo(spec),
        uid_map=IDENTITY_MAP,
        shares_host_network=False,
        # cgroup v1 rounds the memory limit down to a page.
        limits=EffectiveLimits(pids=limits.pids, memory=limits.memory - 4096, cpus=limits.cpus),
    )


def failed(checks: list[Check]) -> list[tuple[str, str]]:
    return [(check.name, check.source) for check in checks if check.status == "fail"]


def test_hardened_container_passes(spec: ContainerSpec) -> None:
    checks = check_container(engine_inspect(spec), hardened_view(spec), spec, homes=HOMES)

    assert failed(checks) == []
    assert {check.source for check in checks} == {"inspect", "/proc", "cgroup", "plan"}


def test_every_invariant_is_listed(spec: ContainerSpec) -> None:
    checks = check_container(engine_inspect(spec), hardened_view(spec), spec, homes=HOMES)
    names = {check.name for check in checks}

    assert names >= {
        "network mode", "attached networks", "interfaces", "routes", "capabilities", "privileged",
        "no-new-privileges", "seccomp", "user", "read-only root", "mounts", "sensitive mounts", "memory limit",
        "swap", "pids limit", "cpu limit", "runtime", "every setting as planned",
    }


def test_capability_in_bounding_set_fails(spec: ContainerSpec) -> None:
    view = replace(hardened_view(spec), processes=(status(4242), status(4250, cap_bounding=1 << 13)))

    checks = check_container(engine_inspect(spec), view, spec, homes=HOMES)

    assert failed(checks) == [("capabilities", "/proc")]
    actual = next(check.actual for check in checks if check.name == "capabilities" and check.source == "/proc")
    assert "PID 4250" in actual
    assert "net_raw" in actual


def test_added_capability_fails_inspect_and_plan(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["CapAdd"] = ["CAP_NET_RAW"]

    checks = check_container(inspect, hardened_view(spec), spec, homes=HOMES)

    assert failed(checks) == [("capabilities", "inspect"), ("every setting as planned", "plan")]


def test_network_interface_and_route_fail(spec: ContainerSpec) -> None:
    view = replace(hardened_view(spec), net_dev=NET_DEV_ETH0, net_route=ROUTE_HEADER + DEFAULT_ROUTE)

    checks = check_container(engine_inspect(spec), view, spec, homes=HOMES)

    assert failed(checks) == [("interfaces", "/proc"), ("routes", "/proc")]
    routes = next(check.actual for check in checks if check.name == "routes")
    assert routes == "0.0.0.0/0 via 172.17.0.1 dev eth0"


def test_attached_network_fails(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["NetworkSettings"]["Networks"] = {"bridge": {}}

    assert ("attached networks", "inspect") in failed(check_container(inspect, hardened_view(spec), spec, homes=HOMES))


def test_host_network_namespace_fails(spec: ContainerSpec) -> None:
    view = replace(hardened_view(spec), shares_host_network=True)

    assert failed(check_container(engine_inspect(spec), view, spec, homes=HOMES)) == [("network namespace", "/proc")]


def test_privileged_fails(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Privileged"] = True

    assert ("privileged", "inspect") in failed(check_container(inspect, hardened_view(spec), spec, homes=HOMES))


def test_seccomp_unconfined_fails_both_views(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["SecurityOpt"] = ["no-new-privileges:true", "seccomp=unconfined"]
    view = replace(hardened_view(spec), processes=(status(4242, seccomp="0"),))

    checks = failed(check_container(inspect, view, spec, homes=HOMES))

    assert ("seccomp", "inspect") in checks
    assert ("seccomp", "/proc") in checks


def test_missing_no_new_privileges_fails_both_views(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["SecurityOpt"] = []
    view = replace(hardened_view(spec), processes=(status(4242, no_new_privs="0"),))

    checks = failed(check_container(inspect, view, spec, homes=HOMES))

    assert ("no-new-privileges", "inspect") in checks
    assert ("no-new-privileges", "/proc") in checks


def test_root_process_fails(spec: ContainerSpec) -> None:
    view = replace(hardened_view(spec), processes=(status(4242), status(4250, uid=0)))

    assert failed(check_container(engine_inspect(spec), view, spec, homes=HOMES)) == [("user", "/proc")]


def test_remapped_root_is_still_root(spec: ContainerSpec) -> None:
    # Under userns-remap, host UID 100000 is UID 0 in the container.
    view = replace(hardened_view(spec), processes=(status(4242, uid=100000),), uid_map="0 100000 65536\n")

    assert failed(check_container(engine_inspect(spec), view, spec, homes=HOMES)) == [("user", "/proc")]


@pytest.mark.parametrize("user", ["", "0", "root", "0:0", "1000:0"])
def test_root_user_setting_fails(spec: ContainerSpec, user: str) -> None:
    inspect = engine_inspect(spec)
    inspect["Config"]["User"] = user

    assert ("user", "inspect") in failed(check_container(inspect, hardened_view(spec), spec, homes=HOMES))


def test_writable_root_fails_both_views(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["ReadonlyRootfs"] = False
    view = replace(hardened_view(spec), mountinfo=mountinfo(spec, root_mode="rw"))

    checks = failed(check_container(inspect, view, spec, homes=HOMES))

    assert ("read-only root", "inspect") in checks
    assert ("read-only root", "/proc") in checks


def test_source_mounted_writable_fails(spec: ContainerSpec) -> None:
    writable = spec.model_copy(update={"mounts": tuple(
        mount.model_copy(update={"read_only": False}) if mount.target == "/workspace/src" else mount
        for mount in spec.mounts
    )})
    view = replace(hardened_view(spec), mountinfo=mountinfo(writable))

    checks = check_container(engine_inspect(writable), view, spec, homes=HOMES)

    assert ("mounts", "inspect") in failed(checks)
    assert ("mounts", "/proc") in failed(checks)
    actual = next(check.actual for check in checks if check.name == "mounts" and check.source == "/proc")
    assert "/workspace/src: rw, planned ro" in actual


def test_docker_socket_mount_fails(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"].append({"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/run/docker.sock",
                              "RW": True})
    extra = "120 76 0:24 /docker.sock /run/docker.sock rw,nosuid - tmpfs tmpfs rw\n"
    view = replace(hardened_view(spec), mountinfo=mountinfo(spec, extra=extra))

    checks = failed(check_container(inspect, view, spec, homes=HOMES))

    assert ("sensitive mounts", "inspect") in checks
    assert ("sensitive mounts", "/proc") in checks
    assert ("mounts", "/proc") in checks


def test_home_directory_mount_fails_without_plan(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"].append({"Type": "bind", "Source": "/home/alice", "Destination": "/mnt", "RW": False})

    checks = failed(check_container(inspect, hardened_view(spec), None, homes=HOMES))

    assert ("sensitive mounts", "inspect") in checks
    assert ("mounts", "inspect") in checks


def test_limits_not_in_cgroup_fail(spec: ContainerSpec) -> None:
    view = replace(hardened_view(spec), limits=EffectiveLimits(pids=0, memory=0, cpus=0.0))

    assert failed(check_container(engine_inspect(spec), view, spec, homes=HOMES)) == [
        ("memory limit", "cgroup"), ("pids limit", "cgroup"), ("cpu limit", "cgroup"),
    ]


def test_unlimited_container_fails_without_plan(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"].update({"Memory": 0, "MemorySwap": 0, "PidsLimit": None, "NanoCpus": 0})

    checks = failed(check_container(inspect, hardened_view(spec), None, homes=HOMES))

    assert ("memory limit", "inspect") in checks
    assert ("pids limit", "inspect") in checks
    assert ("cpu limit", "inspect") in checks


def test_unknown_runtime_fails(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Runtime"] = "kata"

    assert ("runtime", "inspect") in failed(check_container(inspect, hardened_view(spec), None, homes=HOMES))


def test_unreadable_probe_fails(spec: ContainerSpec) -> None:
    checks = check_container(engine_inspect(spec), "process 4242 cannot be read", spec, homes=HOMES)

    assert failed(checks) == [("probe from inside", "/proc")]


def test_gvisor_probe_is_skipped(spec: ContainerSpec) -> None:
    checks = check_container(engine_inspect(spec), "gVisor", spec, homes=HOMES, probe_skipped=True)

    assert failed(checks) == []
    assert [check.name for check in checks if check.status == "skip"] == ["probe from inside"]


def test_no_plan_compares_with_default_hardening(spec: ContainerSpec) -> None:
    checks = check_container(engine_inspect(spec), hardened_view(spec), None, homes=HOMES)

    assert failed(checks) == []
    assert [check.name for check in checks if check.status == "skip"] == ["every setting as planned"]


def test_malformed_inspect_fails_without_raising(spec: ContainerSpec) -> None:
    inspect: dict[str, Any] = copy.deepcopy(engine_inspect(spec))
    inspect["HostConfig"] = "garbage"
    inspect["Mounts"] = None

    checks = failed(check_container(inspect, hardened_view(spec), spec, homes=HOMES))

    assert ("network mode", "inspect") in checks
    assert ("capabilities", "inspect") in checks


def test_seccomp_default_profile_fails(spec: ContainerSpec) -> None:
    # A container under Docker's default profile must not pass as one under orchestrate's profile.
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["SecurityOpt"] = ["no-new-privileges:true"]
    checks = check_container(inspect, hardened_view(spec), spec, homes=HOMES)
    assert ("seccomp", "inspect") in failed(checks)


def test_seccomp_shipped_profile_passes(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    checks = check_container(inspect, hardened_view(spec), spec, homes=HOMES)
    seccomp = next(item for item in checks if (item.name, item.source) == ("seccomp", "inspect"))
    assert seccomp.status == "pass"
    assert seccomp.actual.startswith("profile sha256 ")
    assert len(seccomp.actual) < 40
    options = next(item for item in checks if (item.name, item.source) == ("no-new-privileges", "inspect"))
    assert len(options.actual) < 40
