"""Compare a container's real settings, read from `docker inspect`, with the spec it was created from.

The safety monitor re-inspects every agent container every few seconds and
reports each difference as a `posture-drift` violation, because settings can
change after the start (`docker update`, `docker network connect`). Expected
values come from the same host-config arguments that `DockerRuntime.create`
sends, so the two cannot disagree about what the plan means. Inspect data is
treated as untrusted input: a missing or mistyped key is a drift, never an
exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .plan import ContainerSpec

# Private to the Docker runtime, but it is exactly what `create` passes, so the expected values follow any change.
from .runtime.docker import _host_config_arguments
from .seccomp import text_sha256

# Maximum length of the text of an unexpected value in a drift, so a huge malformed value cannot bloat the audit log.
MAX_VALUE_TEXT = 200


@dataclass(frozen=True)
class Drift:
    """One container setting whose real value differs from the planned value."""

    # Short name of the setting, such as "networks", "cap_add", "memory" or "mounts".
    setting: str
    expected: str
    actual: str

    def to_json(self) -> dict[str, str]:
        return {"setting": self.setting, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class _Missing:
    """A key absent from the inspect data, or a parent of it that is not a JSON object."""

    path: str
    parent_is_object: bool = True

    def describe(self) -> str:
        return self.path if self.parent_is_object else f"{self.path}: not an object"


# A renderer turns a raw value into readable text, or returns None when the value has the wrong type.
Renderer = Callable[[Any], str | None]


def posture_drift(spec: ContainerSpec, inspect: dict[str, Any]) -> list[Drift]:
    """Compare a container's inspect output with the spec it was created from; [] when they agree."""
    arguments = _host_config_arguments(spec)

    drifts = [
        drift
        for setting, expected, actual, render in _scalar_settings(spec, arguments, inspect)
        if (drift := _compare(setting, expected, actual, render)) is not None
    ]
    network_drift = _networks_drift(str(arguments["network_mode"]), inspect)
    if network_drift is not None:
        drifts.append(network_drift)

    apparmor_drift = _apparmor_drift(inspect)
    if apparmor_drift is not None:
        drifts.append(apparmor_drift)

    drifts.extend(_mounts_drift(arguments, inspect))
    return drifts


def _scalar_settings(
    spec: ContainerSpec, arguments: dict[str, Any], inspect: dict[str, Any]
) -> list[tuple[str, Any, Any, Renderer]]:
    """List each setting as (name, expected raw value, actual raw value, renderer)."""
    host = ("HostConfig",)
    expected_cpus = (arguments.get("nano_cpus") or 0, arguments.get("cpu_quota") or 0, arguments.get("cpu_period") or 0)
    actual_cpus = tuple(_lookup(inspect, *host, key) for key in ("NanoCpus", "CpuQuota", "CpuPeriod"))
    actual_devices = _lookup(inspect, *host, "Devices")
    actual_options = _lookup(inspect, *host, "SecurityOpt")

    return [
        ("network_mode", arguments["network_mode"], _lookup(inspect, *host, "NetworkMode"), _name),
        # create disables networking unless the agent has its egress network, so it starts with only loopback.
        ("network_disabled", arguments["network_mode"] == "none",
         _network_disabled(inspect, expected=arguments["network_mode"] == "none"), _flag),
        ("cap_add", arguments.get("cap_add"), _lookup(inspect, *host, "CapAdd"), _names),
        ("cap_drop", arguments.get("cap_drop"), _lookup(inspect, *host, "CapDrop"), _names),
        ("privileged", arguments["privileged"], _lookup(inspect, *host, "Privileged"), _flag),
        # create passes the spec's user as it is.
        ("user", spec.user, _lookup(inspect, "Config", "User"), _user),
        ("read_only_rootfs", arguments["read_only"], _lookup(inspect, *host, "ReadonlyRootfs"), _flag),
        # Compared as a whole set apart from the seccomp profile: any extra entry is a drift.
        ("security_opt", _without_seccomp(arguments.get("security_opt")),
         _without_seccomp(actual_options), _names),
        # The profile's JSON text is long, so it is compared, and shown, by its sha256.
        ("seccomp", _seccomp_entries(arguments.get("security_opt")), _seccomp_entries(actual_options), _seccomp),
        ("ipc_mode", arguments.get("ipc_mode") or "", _lookup(inspect, *host, "IpcMode"), _namespace_mode),
        ("pid_mode", arguments.get("pid_mode") or "", _lookup(inspect, *host, "PidMode"), _namespace_mode),
        ("userns_mode", arguments.get("userns_mode") or "", _lookup(inspect, *host, "UsernsMode"), _namespace_mode),
        ("devices", arguments.get("devices"), _device_strings(actual_devices), _names),
        ("memory", arguments["mem_limit"], _lookup(inspect, *host, "Memory"), _memory),
        ("memory_swap", arguments["memswap_limit"], _lookup(inspect, *host, "MemorySwap"), _memory),
        ("cpus", expected_cpus, actual_cpus, _cpus),
        ("pids_limit", arguments["pids_limit"], _lookup(inspect, *host, "PidsLimit"), _pids),
        ("runtime", arguments["runtime"], _lookup(inspect, *host, "Runtime"), _name),
        ("init", arguments["init"], _lookup(inspect, *host, "Init"), _flag),
    ]


def _compare(setting: str, expected: Any, actual: Any, render: Renderer) -> Drift | None:
    # Renderers give equivalent values (null and [] for a list) the same text and other values different
    # text, so equal text means equal settings.
    expected_text = _text(expected, render)
    actual_text = _text(actual, render)
    if expected_text == actual_text:
        return None
    return Drift(setting=setting, expected=expected_text, actual=actual_text)


def _text(value: Any, render: Renderer) -> str:
    if isinstance(value, _Missing):
        return f"missing ({value.describe()})"
    if isinstance(value, tuple) and any(isinstance(item, _Missing) for item in value):
        # dict.fromkeys keeps one of each, in order, when a whole parent object is missing.
        paths = dict.fromkeys(item.describe() for item in value if isinstance(item, _Missing))
        return "missing (" + ", ".join(paths) + ")"
    text = render(value)
    if text is None:
        return f"invalid value {_shorten(repr(value))}"
    return text


def _lookup(inspect: Any, *keys: str) -> Any:
    value = inspect
    for depth, key in enumerate(keys):
        if not isinstance(value, dict):
            return _Missing(".".join(keys[:depth]) or "inspect data", parent_is_object=False)
        if key not in value:
            return _Missing(".".join(keys[: depth + 1]))
        value = value[key]
    return value


def _shorten(text: str) -> str:
    if len(text) <= MAX_VALUE_TEXT:
        return text
    return text[: MAX_VALUE_TEXT - 3] + "..."


# Renderers. Each returns None for a value of the wrong type, which _text reports as invalid.


def _flag(value: Any) -> str | None:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return None


def _name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value or "(empty)"


def _user(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value or "(empty: the image's user, often root)"


def _namespace_mode(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value or "(empty: the engine's default)"


def _names(value: Any) -> str | None:
    # The engine stores an empty list as null, and both mean "none".
    if value is None:
        return "none"
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        return None
    return ", ".join(sorted(value)) or "none"


def _is_seccomp(option: str) -> bool:
    return option.startswith(("seccomp=", "seccomp:"))


def _without_seccomp(options: Any) -> Any:
    """Return security options without the seccomp entry, or the raw value when it is not a list of strings."""
    if not isinstance(options, list) or not all(isinstance(item, str) for item in options):
        return options
    return [option for option in options if not _is_seccomp(option)]


def _seccomp_entries(options: Any) -> Any:
    """Return the seccomp entries of security options as ("sha256", hex) or ("value", text) pairs."""
    if not isinstance(options, list) or not all(isinstance(item, str) for item in options):
        return options
    entries = []
    for option in options:
        if not _is_seccomp(option):
            continue
        value = option[len("seccomp="):]
        if value.lstrip().startswith("{"):
            entries.append(("sha256", text_sha256(value)))
        else:
            entries.append(("value", value))
    return entries


def _seccomp(value: Any) -> str | None:
    """Render seccomp entries: a profile by its sha256, another value (such as unconfined) as it is."""
    if not isinstance(value, list) or not all(isinstance(item, tuple) for item in value):
        return None
    if not value:
        return "no seccomp option (the engine's default profile)"
    parts = [f"profile sha256 {text}" if kind == "sha256" else _shorten(text) for kind, text in value]
    return ", ".join(sorted(parts))


def _device_strings(devices: Any) -> Any:
    """Return inspect's device mappings in the SDK's `host:container:permissions` form, or the raw value."""
    if not isinstance(devices, list):
        return devices
    strings = []
    for device in devices:
        if not isinstance(device, dict):
            strings.append(f"invalid entry {_shorten(repr(device))}")
            continue
        path_on_host = device.get("PathOnHost", "?")
        path_in_container = device.get("PathInContainer", "?")
        strings.append(f"{path_on_host}:{path_in_container}:{device.get('CgroupPermissions', '?')}")
    return strings


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {unit}"
    return f"{value} bytes"


def _memory(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if value == -1:
        return "unlimited (-1)"
    if value == 0:
        return "unset (0)"
    return _size(value)


def _pids(value: Any) -> str | None:
    # In the Engine API, null, 0 and -1 all mean no PIDs limit.
    if value is None:
        return "unlimited (unset)"
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if value <= 0:
        return f"unlimited ({value})"
    return str(value)


def _cpus(value: Any) -> str | None:
    """Render (NanoCpus, CpuQuota, CpuPeriod) as the CPU count they allow, naming the fields that set it."""
    if not isinstance(value, tuple) or len(value) != 3:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return None

    nano_cpus, quota, period = value
    parts = []
    if nano_cpus:
        parts.append(f"{_cpu_count(nano_cpus / 1_000_000_000)} (NanoCpus {nano_cpus})")
    if quota or period:
        # A quota of -1 means no quota, and the kernel's CFS period is 100 ms when the engine leaves it at 0.
        allowed = _cpu_count(quota / (period or 100_000)) if quota > 0 else "unlimited"
        parts.append(f"{allowed} (CpuQuota {quota}, CpuPeriod {period})")
    return " and ".join(parts) or "unlimited"


def _cpu_count(count: float) -> str:
    number = str(int(count)) if count.is_integer() else str(count)
    return f"{number} CPU" if count == 1 else f"{number} CPUs"


def _network_disabled(inspect: dict[str, Any], *, expected: bool) -> Any:
    # The engine leaves Config.NetworkDisabled out when it is false, as for an agent on its egress network.
    value = _lookup(inspect, "Config", "NetworkDisabled")
    if not expected and isinstance(value, _Missing) and isinstance(inspect.get("Config"), dict):
        return False
    return value


def _networks_drift(network_mode: str, inspect: dict[str, Any]) -> Drift | None:
    """Check that the container is attached to its network mode's network and to nothing else.

    A container created with networking disabled has no endpoint at all, not even
    one on the "none" network (seen on Docker 20.10), so for mode none both an
    empty set and {"none"} agree with the plan.
    """
    networks = _lookup(inspect, "NetworkSettings", "Networks")
    expected = network_mode
    if isinstance(networks, _Missing):
        return Drift(setting="networks", expected=expected, actual=f"missing ({networks.describe()})")
    if networks is not None and not isinstance(networks, dict):
        return Drift(setting="networks", expected=expected, actual=f"invalid value {_shorten(repr(networks))}")

    names = {str(name) for name in networks or {}}
    if names == {network_mode} or (network_mode == "none" and not names):
        return None
    return Drift(setting="networks", expected=expected, actual=", ".join(sorted(names)) or "no network")


def _apparmor_drift(inspect: dict[str, Any]) -> Drift | None:
    """Check that AppArmor is not unconfined. create requests no profile, so the engine's default applies."""
    profile = _lookup(inspect, "AppArmorProfile")
    expected = "the engine's default profile, or none on a host without AppArmor"
    if isinstance(profile, _Missing):
        return Drift(setting="apparmor", expected=expected, actual=f"missing ({profile.describe()})")
    if not isinstance(profile, str):
        return Drift(setting="apparmor", expected=expected, actual=f"invalid value {_shorten(repr(profile))}")
    if profile == "unconfined":
        return Drift(setting="apparmor", expected=expected, actual=profile)
    return None


def _mounts_drift(arguments: dict[str, Any], inspect: dict[str, Any]) -> list[Drift]:
    """Compare mounts target by target, so each changed, missing or extra mount is one drift."""
    expected = _expected_mounts(arguments)
    actual = _actual_mounts(inspect)
    if isinstance(actual, str):
        planned = "; ".join(_mounts_text(target, expected[target]) for target in sorted(expected))
        return [Drift(setting="mounts", expected=planned, actual=actual)]

    drifts = []
    for target in sorted(expected.keys() | actual.keys()):
        expected_text = _mounts_text(target, expected.get(target, []))
        actual_text = _mounts_text(target, actual.get(target, []))
        if expected_text != actual_text:
            drifts.append(Drift(setting="mounts", expected=expected_text, actual=actual_text))
    return drifts


def _mounts_text(target: str, descriptions: list[str]) -> str:
    return f"{target}: " + (" and ".join(sorted(descriptions)) or "no mount")


def _expected_mounts(arguments: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    # Each item is a docker.types.Mount, which is a dict in the engine's own field names.
    for mount in arguments.get("mounts") or []:
        if mount["Type"] == "tmpfs":
            size = (mount.get("TmpfsOptions") or {}).get("SizeBytes")
            description = _tmpfs_mount_text(not mount.get("ReadOnly"), size)
        else:
            propagation = (mount.get("BindOptions") or {}).get("Propagation")
            description = _source_mount_text(mount["Type"], mount.get("Source"), not mount.get("ReadOnly"), propagation)
        found.setdefault(mount["Target"], []).append(description)
    for target, options in (arguments.get("tmpfs") or {}).items():
        found.setdefault(target, []).append(f"tmpfs {options}")
    return found


def _actual_mounts(inspect: dict[str, Any]) -> dict[str, list[str]] | str:
    """Return the mounts by target, or a message that names the unusable part of the inspect data.

    The top-level Mounts list shows what is mounted, but not the size of a tmpfs,
    which only HostConfig.Mounts holds. Docker 20.10 lists HostConfig.Tmpfs
    entries in neither list, so they are read from HostConfig.Tmpfs.
    """
    mounts = _lookup(inspect, "Mounts")
    requested = _lookup(inspect, "HostConfig", "Mounts")
    tmpfs = _lookup(inspect, "HostConfig", "Tmpfs")
    for value in (mounts, requested, tmpfs):
        if isinstance(value, _Missing):
            return f"missing ({value.describe()})"
    if not isinstance(mounts, list) or not all(isinstance(item, dict) for item in mounts):
        return f"invalid value of Mounts {_shorten(repr(mounts))}"
    if requested is not None and not (isinstance(requested, list) and all(isinstance(m, dict) for m in requested)):
        return f"invalid value of HostConfig.Mounts {_shorten(repr(requested))}"
    if tmpfs is not None and not isinstance(tmpfs, dict):
        return f"invalid value of HostConfig.Tmpfs {_shorten(repr(tmpfs))}"

    tmpfs = tmpfs or {}
    sizes = {
        str(item.get("Target")): _object(item.get("TmpfsOptions")).get("SizeBytes")
        for item in requested or []
        if item.get("Type") == "tmpfs"
    }
    found: dict[str, list[str]] = {}
    for item in mounts:
        target = str(item.get("Destination", "(no destination)"))
        kind = item.get("Type")
        writable = item.get("RW")
        if kind == "tmpfs" and target in tmpfs and target not in sizes:
            # An engine that also lists a HostConfig.Tmpfs entry here would describe it twice, so only the
            # HostConfig.Tmpfs loop below describes it.
            continue
        if kind == "tmpfs":
            description = _tmpfs_mount_text(writable, sizes.get(target))
        else:
            source = item.get("Name") if kind == "volume" else item.get("Source")
            description = _source_mount_text(kind, source, writable, item.get("Propagation"))
        found.setdefault(target, []).append(description)
    for target, options in tmpfs.items():
        found.setdefault(str(target), []).append(f"tmpfs {options}")
    return found


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _access(writable: Any) -> str:
    if isinstance(writable, bool):
        return "read-write" if writable else "read-only"
    return f"access unknown ({_shorten(repr(writable))})"


def _source_mount_text(kind: Any, source: Any, writable: Any, propagation: Any) -> str:
    text = f"{_shorten(str(kind))} {_shorten(str(source))}, {_access(writable)}"
    if propagation:
        text += f", propagation {propagation}"
    return text


def _tmpfs_mount_text(writable: Any, size: Any) -> str:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        size_text = _size(size)
    else:
        size_text = f"unlimited ({_shorten(repr(size))})"
    return f"tmpfs, {_access(writable)}, size {size_text}"
