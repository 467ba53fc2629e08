"""posture_drift against inspect data shaped like Docker 20.10's, for a container made from a real plan.

`engine_inspect` writes down, field by field, what the engine returned for a
container that `DockerRuntime.create` made from the spec. It is built from the
spec here, not from the module under test, so a wrong expected value in
posture.py makes these tests fail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.plan import ContainerSpec, RunPlan
from orchestrator.posture import Drift, posture_drift
from orchestrator.seccomp import shipped_profile, text_sha256

from .conftest import agent, manifest_data

PlanFor = Callable[..., RunPlan]
Inspect = dict[str, Any]


@pytest.fixture
def spec(plan_for: PlanFor, source_dir: Path) -> ContainerSpec:
    resources = {"cpus": 0.5, "memory": "512m", "pids": 128, "tmp": "32m", "home": "16m"}
    plan = plan_for(manifest_data(source_dir, agents=[agent("reader", resources=resources)]))
    return plan.agents[0].container


def engine_inspect(spec: ContainerSpec) -> Inspect:
    """Return the inspect data of a running container that create made from `spec`, trimmed to what matters."""
    uid, gid = spec.user.split(":")
    binds = [mount for mount in spec.mounts if mount.type == "bind"]
    masks = [mount for mount in spec.mounts if mount.type == "tmpfs" and mount.read_only]
    writable_tmpfs = [mount for mount in spec.mounts if mount.type == "tmpfs" and not mount.read_only]

    requested_mounts: list[dict[str, Any]] = [
        {"Type": "bind", "Source": mount.source, "Target": mount.target, "BindOptions": {"Propagation": "rprivate"}}
        | ({"ReadOnly": True} if mount.read_only else {})
        for mount in binds
    ]
    requested_mounts += [
        {"Type": "tmpfs", "Target": mount.target, "ReadOnly": True, "TmpfsOptions": {"SizeBytes": mount.size}}
        for mount in masks
    ]
    # The engine lists binds and HostConfig.Mounts tmpfs here, in its own order, but not HostConfig.Tmpfs.
    mounted = [
        {"Type": "bind", "Source": mount.source, "Destination": mount.target, "Mode": "",
         "RW": not mount.read_only, "Propagation": "rprivate"}
        for mount in reversed(binds)
    ]
    mounted += [
        {"Type": "tmpfs", "Source": "", "Destination": mount.target, "Mode": "", "RW": False, "Propagation": ""}
        for mount in masks
    ]

    return {
        "Id": "c0ffee" * 10 + "abcd",
        "AppArmorProfile": "",
        "HostConfig": {
            "NetworkMode": "none",
            "CapAdd": None,
            "CapDrop": ["ALL"],
            "IpcMode": "private",
            "PidMode": "",
            "UsernsMode": "",
            "Privileged": False,
            "ReadonlyRootfs": True,
            "SecurityOpt": ["no-new-privileges:true", shipped_profile().option],
            "Tmpfs": {
                mount.target: f"rw,nosuid,nodev,size={mount.size},uid={uid},gid={gid},mode=0700"
                for mount in writable_tmpfs
            },
            "Runtime": "runc",
            "Memory": spec.limits.memory,
            "MemorySwap": spec.limits.memory,
            "NanoCpus": int(spec.limits.cpus * 1_000_000_000),
            "CpuPeriod": 0,
            "CpuQuota": 0,
            "Devices": None,
            "PidsLimit": spec.limits.pids,
            "Mounts": requested_mounts,
            "Init": True,
        },
        "Mounts": mounted,
        "Config": {"User": spec.user, "NetworkDisabled": True, "OpenStdin": True, "StdinOnce": True},
        # A container created with networking disabled has no endpoint, not even on "none".
        "NetworkSettings": {"Networks": {}},
    }


def settings_of(drifts: list[Drift]) -> list[str]:
    return [drift.setting for drift in drifts]


def test_matching_inspect_has_no_drift(spec: ContainerSpec) -> None:
    assert posture_drift(spec, engine_inspect(spec)) == []


def test_none_network_endpoint_is_no_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["NetworkSettings"]["Networks"] = {"none": {"NetworkID": "aeb4d5fe93ed"}}

    assert posture_drift(spec, inspect) == []


def test_null_networks_is_no_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["NetworkSettings"]["Networks"] = None

    assert posture_drift(spec, inspect) == []


def test_empty_list_equals_null(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["CapAdd"] = []
    inspect["HostConfig"]["Devices"] = []

    assert posture_drift(spec, inspect) == []


def host(key: str, value: Any) -> Callable[[Inspect], None]:
    def change(inspect: Inspect) -> None:
        inspect["HostConfig"][key] = value

    return change


def config(key: str, value: Any) -> Callable[[Inspect], None]:
    def change(inspect: Inspect) -> None:
        inspect["Config"][key] = value

    return change


def connect(name: str) -> Callable[[Inspect], None]:
    def change(inspect: Inspect) -> None:
        inspect["NetworkSettings"]["Networks"][name] = {"NetworkID": "0123456789ab"}

    return change


def set_apparmor(inspect: Inspect) -> None:
    inspect["AppArmorProfile"] = "unconfined"


# A profile that allows every system call, as a swapped profile text would.
PERMISSIVE_PROFILE = '{"defaultAction": "SCMP_ACT_ALLOW"}'

# Each case changes one setting as `docker update`, `docker network connect` or a recreated container would.
ONE_SETTING_CHANGES: list[tuple[str, str, Callable[[Inspect], None], str, str]] = [
    ("network mode host", "network_mode", host("NetworkMode", "host"), "none", "host"),
    ("network enabled", "network_disabled", config("NetworkDisabled", False), "true", "false"),
    ("network connected", "networks", connect("escape-net"), "none", "escape-net"),
    ("capability added", "cap_add", host("CapAdd", ["SYS_ADMIN", "NET_RAW"]), "none", "NET_RAW, SYS_ADMIN"),
    ("capabilities kept", "cap_drop", host("CapDrop", None), "ALL", "none"),
    ("privileged", "privileged", host("Privileged", True), "false", "true"),
    ("root user", "user", config("User", "0:0"), "1234:5678", "0:0"),
    ("image user", "user", config("User", ""), "1234:5678", "(empty: the image's user, often root)"),
    ("writable root", "read_only_rootfs", host("ReadonlyRootfs", False), "true", "false"),
    (
        "no-new-privileges dropped", "security_opt",
        host("SecurityOpt", [shipped_profile().option]), "no-new-privileges:true", "none",
    ),
    (
        "seccomp unconfined", "seccomp",
        host("SecurityOpt", ["seccomp=unconfined", "no-new-privileges:true"]),
        f"profile sha256 {shipped_profile().sha256}", "unconfined",
    ),
    (
        "seccomp option dropped", "seccomp",
        host("SecurityOpt", ["no-new-privileges:true"]),
        f"profile sha256 {shipped_profile().sha256}", "no seccomp option (the engine's default profile)",
    ),
    (
        "seccomp profile replaced", "seccomp",
        host("SecurityOpt", ["no-new-privileges:true", "seccomp=" + PERMISSIVE_PROFILE]),
        f"profile sha256 {shipped_profile().sha256}", f"profile sha256 {text_sha256(PERMISSIVE_PROFILE)}",
    ),
    (
        "apparmor option unconfined", "security_opt",
        host("SecurityOpt", ["no-new-privileges:true", "apparmor=unconfined", shipped_profile().option]),
        "no-new-privileges:true", "apparmor=unconfined, no-new-privileges:true",
    ),
    ("apparmor profile unconfined", "apparmor", set_apparmor, "default profile", "unconfined"),
    ("host ipc", "ipc_mode", host("IpcMode", "host"), "private", "host"),
    ("host pid", "pid_mode", host("PidMode", "host"), "(empty: the engine's default)", "host"),
    ("host userns", "userns_mode", host("UsernsMode", "host"), "(empty: the engine's default)", "host"),
    (
        "device added", "devices",
        host("Devices", [{"PathOnHost": "/dev/kvm", "PathInContainer": "/dev/kvm", "CgroupPermissions": "rwm"}]),
        "none", "/dev/kvm:/dev/kvm:rwm",
    ),
    ("memory raised", "memory", host("Memory", 2 * 1024**3), "512 MiB", "2 GiB"),
    ("memory removed", "memory", host("Memory", 0), "512 MiB", "unset (0)"),
    ("swap unlimited", "memory_swap", host("MemorySwap", -1), "512 MiB", "unlimited (-1)"),
    ("cpus raised", "cpus", host("NanoCpus", 2_000_000_000), "0.5 CPUs (NanoCpus 500000000)", "2 CPUs (NanoCpus"),
    ("cpus removed", "cpus", host("NanoCpus", 0), "0.5 CPUs (NanoCpus 500000000)", "unlimited"),
    ("pids unlimited", "pids_limit", host("PidsLimit", None), "128", "unlimited (unset)"),
    ("pids raised", "pids_limit", host("PidsLimit", 4096), "128", "4096"),
    ("other runtime", "runtime", host("Runtime", "runsc"), "runc", "runsc"),
    ("init off", "init", host("Init", False), "true", "false"),
    ("init unset", "init", host("Init", None), "true", "unset"),
]


@pytest.mark.parametrize(
    ("setting", "change", "expected", "actual"),
    [case[1:] for case in ONE_SETTING_CHANGES],
    ids=[case[0] for case in ONE_SETTING_CHANGES],
)
def test_changed_setting_is_one_drift(
    spec: ContainerSpec, setting: str, change: Callable[[Inspect], None], expected: str, actual: str
) -> None:
    inspect = engine_inspect(spec)
    change(inspect)

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == [setting]
    assert expected in drifts[0].expected
    assert drifts[0].actual.startswith(actual)


def test_cpu_quota_added_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["NanoCpus"] = 0
    inspect["HostConfig"]["CpuQuota"] = 150_000
    inspect["HostConfig"]["CpuPeriod"] = 100_000

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["cpus"]
    assert drifts[0].actual == "1.5 CPUs (CpuQuota 150000, CpuPeriod 100000)"


def test_memory_drift_is_readable(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Memory"] = 256 * 1024**2

    assert posture_drift(spec, inspect) == [Drift(setting="memory", expected="512 MiB", actual="256 MiB")]


def test_drift_to_json(spec: ContainerSpec) -> None:
    drift = Drift(setting="memory", expected="512 MiB", actual="256 MiB")

    assert drift.to_json() == {"setting": "memory", "expected": "512 MiB", "actual": "256 MiB"}


def workspace_target(spec: ContainerSpec) -> str:
    return next(mount.target for mount in spec.mounts if mount.type == "bind" and not mount.read_only)


def find_mount(inspect: Inspect, target: str) -> dict[str, Any]:
    return next(item for item in inspect["Mounts"] if item["Destination"] == target)


def test_workspace_made_read_only_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    target = workspace_target(spec)
    find_mount(inspect, target)["RW"] = False

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].expected.startswith(f"{target}: bind ")
    assert "read-write" in drifts[0].expected
    assert "read-only" in drifts[0].actual


def test_source_made_writable_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    find_mount(inspect, "/workspace/src")["RW"] = True

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert "read-write" in drifts[0].actual


def test_bind_source_changed_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    find_mount(inspect, workspace_target(spec))["Source"] = "/home/user"

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert "bind /home/user," in drifts[0].actual


def test_bind_propagation_changed_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    find_mount(inspect, workspace_target(spec))["Propagation"] = "rshared"

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].actual.endswith("propagation rshared")


def test_extra_mount_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"].append({
        "Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock",
        "Mode": "", "RW": True, "Propagation": "rprivate",
    })

    drifts = posture_drift(spec, inspect)

    assert drifts == [Drift(
        setting="mounts",
        expected="/var/run/docker.sock: no mount",
        actual="/var/run/docker.sock: bind /var/run/docker.sock, read-write, propagation rprivate",
    )]


def test_extra_volume_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"].append({
        "Type": "volume", "Name": "0f3a", "Source": "/var/lib/docker/volumes/0f3a/_data", "Destination": "/data",
        "Driver": "local", "Mode": "", "RW": True, "Propagation": "",
    })

    drifts = posture_drift(spec, inspect)

    assert drifts == [Drift(setting="mounts", expected="/data: no mount", actual="/data: volume 0f3a, read-write")]


def test_missing_mount_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"] = [item for item in inspect["Mounts"] if item["Destination"] != "/workspace/shared"]

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].actual == "/workspace/shared: no mount"


def test_mask_size_changed_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    mask = next(item for item in inspect["HostConfig"]["Mounts"] if item["Type"] == "tmpfs")
    mask["TmpfsOptions"] = {}

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].expected.endswith("tmpfs, read-only, size 4 KiB")
    assert drifts[0].actual.endswith("tmpfs, read-only, size unlimited (None)")


def test_mask_made_writable_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    find_mount(inspect, "/workspace/shared/.orchestrate")["RW"] = True

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert "read-write" in drifts[0].actual


def test_tmpfs_options_changed_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Tmpfs"]["/tmp"] = "rw,exec,size=1073741824"

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert "size=33554432" in drifts[0].expected
    assert drifts[0].actual == "/tmp: tmpfs rw,exec,size=1073741824"


def test_tmpfs_removed_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    del inspect["HostConfig"]["Tmpfs"]["/home/agent"]

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].actual == "/home/agent: no mount"


def test_tmpfs_listed_in_mounts_no_drift(spec: ContainerSpec) -> None:
    # An engine that also listed HostConfig.Tmpfs entries among the container's mounts must not cause a drift.
    inspect = engine_inspect(spec)
    for target in inspect["HostConfig"]["Tmpfs"]:
        inspect["Mounts"].append(
            {"Type": "tmpfs", "Source": "", "Destination": target, "Mode": "", "RW": True, "Propagation": ""}
        )

    assert posture_drift(spec, inspect) == []


ALL_SETTINGS = [
    "network_mode", "network_disabled", "cap_add", "cap_drop", "privileged", "user", "read_only_rootfs",
    "security_opt", "seccomp", "ipc_mode", "pid_mode", "userns_mode", "devices", "memory", "memory_swap", "cpus",
    "pids_limit", "runtime", "init", "networks", "apparmor", "mounts",
]


@pytest.mark.parametrize("inspect", [{}, None, [], "not json"], ids=["empty", "null", "list", "string"])
def test_unusable_inspect_drifts_everywhere(spec: ContainerSpec, inspect: Any) -> None:
    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ALL_SETTINGS
    assert all(drift.actual.startswith("missing (") for drift in drifts)


# Each key whose absence must be reported, with the settings that report it (comma-separated).
REQUIRED_KEYS: list[tuple[tuple[str, ...], str]] = [
    (("HostConfig", "NetworkMode"), "network_mode"),
    (("Config", "NetworkDisabled"), "network_disabled"),
    (("HostConfig", "CapAdd"), "cap_add"),
    (("HostConfig", "CapDrop"), "cap_drop"),
    (("HostConfig", "Privileged"), "privileged"),
    (("Config", "User"), "user"),
    (("HostConfig", "ReadonlyRootfs"), "read_only_rootfs"),
    (("HostConfig", "SecurityOpt"), "security_opt,seccomp"),
    (("HostConfig", "IpcMode"), "ipc_mode"),
    (("HostConfig", "PidMode"), "pid_mode"),
    (("HostConfig", "UsernsMode"), "userns_mode"),
    (("HostConfig", "Devices"), "devices"),
    (("HostConfig", "Memory"), "memory"),
    (("HostConfig", "MemorySwap"), "memory_swap"),
    (("HostConfig", "NanoCpus"), "cpus"),
    (("HostConfig", "CpuQuota"), "cpus"),
    (("HostConfig", "PidsLimit"), "pids_limit"),
    (("HostConfig", "Runtime"), "runtime"),
    (("HostConfig", "Init"), "init"),
    (("NetworkSettings", "Networks"), "networks"),
    (("NetworkSettings",), "networks"),
    (("AppArmorProfile",), "apparmor"),
    (("Mounts",), "mounts"),
    (("HostConfig", "Mounts"), "mounts"),
    (("HostConfig", "Tmpfs"), "mounts"),
]


@pytest.mark.parametrize(("path", "setting"), REQUIRED_KEYS, ids=[".".join(path) for path, _ in REQUIRED_KEYS])
def test_missing_key_is_drift(spec: ContainerSpec, path: tuple[str, ...], setting: str) -> None:
    inspect = engine_inspect(spec)
    parent = inspect
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == setting.split(",")
    assert all(drift.actual == f"missing ({'.'.join(path)})" for drift in drifts)


def test_missing_host_config_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    del inspect["HostConfig"]

    drifts = posture_drift(spec, inspect)

    assert "memory" in settings_of(drifts)
    assert "mounts" in settings_of(drifts)
    assert "user" not in settings_of(drifts)


def test_host_config_not_object_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"] = ["not", "an", "object"]

    drifts = posture_drift(spec, inspect)

    memory = next(drift for drift in drifts if drift.setting == "memory")
    assert memory.actual == "missing (HostConfig: not an object)"


WRONG_TYPES: list[tuple[str, Callable[[Inspect], None], str]] = [
    ("memory as text", host("Memory", "512m"), "memory"),
    ("privileged as text", host("Privileged", "false"), "privileged"),
    ("privileged as number", host("Privileged", 0), "privileged"),
    ("cap drop as text", host("CapDrop", "ALL"), "cap_drop"),
    ("pids as bool", host("PidsLimit", True), "pids_limit"),
    ("cpus as float", host("NanoCpus", 500_000_000.0), "cpus"),
    ("devices as text", host("Devices", "/dev/kvm"), "devices"),
    ("user as number", config("User", 1000), "user"),
    ("tmpfs as list", host("Tmpfs", ["/tmp"]), "mounts"),
    ("host mounts as object", host("Mounts", {}), "mounts"),
]


@pytest.mark.parametrize(
    ("change", "setting"), [case[1:] for case in WRONG_TYPES], ids=[case[0] for case in WRONG_TYPES]
)
def test_wrong_type_is_drift(spec: ContainerSpec, change: Callable[[Inspect], None], setting: str) -> None:
    inspect = engine_inspect(spec)
    change(inspect)

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == [setting]
    assert drifts[0].actual.startswith("invalid value")


def test_device_entry_not_object_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Devices"] = ["/dev/kvm"]

    drifts = posture_drift(spec, inspect)

    assert drifts == [Drift(setting="devices", expected="none", actual="invalid entry '/dev/kvm'")]


def test_malformed_mount_entries_are_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    find_mount(inspect, "/workspace/src")["RW"] = "false"
    inspect["Mounts"].append({"Type": "bind"})

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts", "mounts"]
    assert "access unknown ('false')" in drifts[1].actual
    assert drifts[0].actual.startswith("(no destination): bind None")


def test_malformed_tmpfs_request_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    mask = next(item for item in inspect["HostConfig"]["Mounts"] if item["Type"] == "tmpfs")
    mask["TmpfsOptions"] = ["SizeBytes", 4096]
    inspect["HostConfig"]["Mounts"].append({"Type": "tmpfs", "Target": ["/a", "/b"]})

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].actual.endswith("tmpfs, read-only, size unlimited (None)")


def test_mounts_not_list_is_drift(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["Mounts"] = [["/workspace/src"]]

    drifts = posture_drift(spec, inspect)

    assert settings_of(drifts) == ["mounts"]
    assert drifts[0].actual.startswith("invalid value of Mounts")


def test_long_invalid_value_is_shortened(spec: ContainerSpec) -> None:
    inspect = engine_inspect(spec)
    inspect["HostConfig"]["Memory"] = "x" * 10_000

    drifts = posture_drift(spec, inspect)

    assert len(drifts[0].actual) < 300


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
REPLACEABLE = ["HostConfig", "Config", "NetworkSettings", "Mounts", "AppArmorProfile"]


# The spec fixture is function-scoped, but no example changes it, so sharing it between examples is safe.
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_values_never_raise(spec: ContainerSpec, data: st.DataObject) -> None:
    inspect = engine_inspect(spec)
    # Walk down from a top-level key through objects and lists, then replace the value reached.
    parent: Any = inspect
    key: Any = data.draw(st.sampled_from(REPLACEABLE))
    while isinstance(parent[key], dict | list) and parent[key] and data.draw(st.booleans()):
        parent = parent[key]
        key = data.draw(st.sampled_from(sorted(parent) if isinstance(parent, dict) else range(len(parent))))
    parent[key] = data.draw(JSON_VALUES)

    drifts = posture_drift(spec, inspect)

    assert all(isinstance(drift, Drift) for drift in drifts)
