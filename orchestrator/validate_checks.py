"""The security checks of `orchestrate validate`, as pure functions of inspect data and the /proc view.

Each invariant is checked twice where the kernel can show it: once in the
engine's inspect data (what was requested) and once in the container's /proc
view (what is in force). Inspect data is untrusted input, so a missing or
mistyped key fails a check instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .hostpaths import sensitive_reason
from .layout import HOME_TARGET, OUTPUT_TARGET, SHARED_TARGET, SOURCE_TARGET, TMP_TARGET
from .plan import ContainerSpec
from .posture import posture_drift
from .procview import ProcView, container_uid, parse_interfaces, parse_mountinfo, parse_routes
from .seccomp import option_sha256, shipped_profile

Status = Literal["pass", "fail", "skip"]

# Capability numbers of Linux 6.x, in order; a bit past the end is shown by its number.
CAPABILITY_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
    "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
    "checkpoint_restore",
)

# Mount points that the engine itself adds to every container; everything else must come from the plan.
ENGINE_MOUNT_POINTS = ("/", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/usr/sbin/docker-init")
ENGINE_MOUNT_TREES = ("/proc", "/dev", "/sys")

# The three bind mounts of an agent container and whether each is read-only, for checks without a plan.
DEFAULT_BIND_MODES = {SOURCE_TARGET: True, OUTPUT_TARGET: False, SHARED_TARGET: True}
DEFAULT_TMPFS_TARGETS = (TMP_TARGET, HOME_TARGET)

# cgroup v1 rounds the memory limit down to a whole page, so the cgroup may show a little less.
MEMORY_ROUNDING = 64 * 1024


@dataclass(frozen=True)
class Check:
    """One security invariant of one container: what it must be, what it is, and the verdict."""

    name: str
    # Origin of the actual value: "inspect", "/proc", "cgroup" or "plan".
    source: str
    expected: str
    actual: str
    status: Status

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "source": self.source, "expected": self.expected, "actual": self.actual,
                "status": self.status}


def _check(name: str, source: str, expected: str, actual: str, ok: bool) -> Check:
    return Check(name, source, expected, actual, "pass" if ok else "fail")


def check_container(
    inspect: dict[str, Any],
    probe: ProcView | str,
    spec: ContainerSpec | None,
    *,
    homes: Iterable[Path],
    probe_skipped: bool = False,
) -> list[Check]:
    """Check every invariant of one container.

    `probe` is its /proc view, or the reason it could not be read. A reason fails
    every /proc check, unless `probe_skipped` marks a runtime with no
    readable view (gVisor), which marks them skipped. `spec` is the plan's
    container spec when the run folder has one; without it, the checks expect
    the hardening that every plan has.
    """
    homes = list(homes)
    checks = [
        *_network_checks(inspect, spec),
        *_privilege_checks(inspect),
        *_filesystem_checks(inspect, spec, homes),
        *_limit_checks(inspect, spec),
        _runtime_check(inspect, spec),
    ]
    if isinstance(probe, ProcView):
        checks.extend(probe_checks(probe, inspect, spec))
    else:
        status: Status = "skip" if probe_skipped else "fail"
        checks.append(Check("probe from inside", "/proc", "the container's processes readable", probe, status))
    checks.append(_plan_check(inspect, spec))
    return checks


def _host(inspect: dict[str, Any]) -> dict[str, Any]:
    host = inspect.get("HostConfig")
    return host if isinstance(host, dict) else {}


def _config(inspect: dict[str, Any]) -> dict[str, Any]:
    config = inspect.get("Config")
    return config if isinstance(config, dict) else {}


def _network_checks(inspect: dict[str, Any], spec: ContainerSpec | None) -> list[Check]:
    """Expect no network, or for an agent behind the egress broker exactly its own egress network."""
    expected = "none" if spec is None else spec.security.network_mode
    mode = _host(inspect).get("NetworkMode")
    settings = inspect.get("NetworkSettings")
    networks = settings.get("Networks") if isinstance(settings, dict) else None
    # A container created with networking disabled has no endpoint, not even one on "none" (Docker 20.10).
    attached = sorted(name for name in (networks or {}) if name != "none") if isinstance(networks, dict | None) else [
        f"invalid value {networks!r}"]
    expected_networks = [] if expected == "none" else [expected]
    return [
        _check("network mode", "inspect", expected, repr(mode) if not isinstance(mode, str) else mode,
               mode == expected),
        _check("attached networks", "inspect", expected, ", ".join(attached) or "none", attached == expected_networks),
    ]


def _security_options(inspect: dict[str, Any]) -> list[str]:
    options = _host(inspect).get("SecurityOpt")
    return [str(item) for item in options] if isinstance(options, list) else []


def _privilege_checks(inspect: dict[str, Any]) -> list[Check]:
    host = _host(inspect)
    cap_drop = host.get("CapDrop") if isinstance(host.get("CapDrop"), list) else []
    cap_add = host.get("CapAdd") if isinstance(host.get("CapAdd"), list) else []
    drops_all = any(str(item).upper() in ("ALL", "CAP_ALL") for item in cap_drop or [])
    dropped = ", ".join(map(str, cap_drop or [])) or "none"
    added = ", ".join(map(str, cap_add or [])) or "none"
    capabilities = f"drop {dropped}; add {added}"

    options = _security_options(inspect)
    no_new_privileges = any(item in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")
                            for item in options)
    unconfined = [item for item in options if item.replace("=", ":") in ("seccomp:unconfined",)]

    user = _config(inspect).get("User")
    user_text = user if isinstance(user, str) else repr(user)
    return [
        _check("capabilities", "inspect", "drop ALL; add none", capabilities, drops_all and not cap_add),
        _check("privileged", "inspect", "false", str(host.get("Privileged")).lower(), host.get("Privileged") is False),
        _check("no-new-privileges", "inspect", "no-new-privileges:true in SecurityOpt",
               "no-new-privileges:true" if no_new_privileges else "not set", no_new_privileges),
        _seccomp_check(options, unconfined),
        _check("user", "inspect", "an unprivileged UID:GID", user_text or "(empty: the image's user, often root)",
               _is_unprivileged_user(user)),
    ]


def _seccomp_check(options: list[str], unconfined: list[str]) -> Check:
    """Pass only orchestrate's own profile: the engine's default one allows calls that agents must not make."""
    expected = f"orchestrate's profile, sha256 {shipped_sha256()[:16]}"
    if unconfined:
        return _check("seccomp", "inspect", expected, "unconfined", False)
    actual_sha256 = option_sha256(options)
    if actual_sha256 is None:
        return _check("seccomp", "inspect", expected, "the engine's default profile", False)
    return _check("seccomp", "inspect", expected, f"profile sha256 {actual_sha256[:16]}",
                  actual_sha256 == shipped_sha256())


def shipped_sha256() -> str:
    return shipped_profile().sha256


def _is_unprivileged_user(user: Any) -> bool:
    if not isinstance(user, str) or not user:
        return False
    name, _, group = user.partition(":")
    # Only numeric IDs are proven: a user name resolves through the image's /etc/passwd, which an image controls.
    if not name.isdigit() or int(name) == 0:
        return False
    return not group or (group.isdigit() and int(group) != 0)


def _filesystem_checks(inspect: dict[str, Any], spec: ContainerSpec | None, homes: list[Path]) -> list[Check]:
    read_only = _host(inspect).get("ReadonlyRootfs")
    checks = [_check("read-only root", "inspect", "true", str(read_only).lower(), read_only is True)]
    checks.append(_mounts_check(inspect, spec))
    checks.append(_sensitive_inspect_check(inspect, homes))
    return checks


def _mounts_check(inspect: dict[str, Any], spec: ContainerSpec | None) -> Check:
    if spec is not None:
        drifts = [drift for drift in posture_drift(spec, inspect) if drift.setting == "mounts"]
        source_copy = any(mount.target == SOURCE_TARGET and not mount.read_only for mount in spec.mounts)
        expected = f"as planned: {'private source copy rw' if source_copy else 'source ro'}, workspace rw, shared ro"
        actual = "; ".join(f"{drift.actual} (planned {drift.expected})" for drift in drifts)
        return _check("mounts", "inspect", expected, actual or "as planned", not drifts)

    mounts = inspect.get("Mounts") if isinstance(inspect.get("Mounts"), list) else []
    problems = []
    seen = {}
    for item in mounts or []:
        if not isinstance(item, dict):
            problems.append(f"invalid entry {item!r}")
            continue
        target = str(item.get("Destination"))
        seen[target] = item
        if item.get("Type") == "tmpfs":
            continue
        expected_read_only = DEFAULT_BIND_MODES.get(target)
        if expected_read_only is None:
            problems.append(f"unexpected {item.get('Type')} mount at {target}")
        elif item.get("RW") is expected_read_only:
            problems.append(f"{target} is {'read-write' if item.get('RW') else 'read-only'}")
    problems.extend(f"no mount at {target}" for target in DEFAULT_BIND_MODES if target not in seen)
    expected = "source ro, workspace rw, shared ro, else only tmpfs"
    return _check("mounts", "inspect", expected, "; ".join(problems) or "as expected", not problems)


def _sensitive_inspect_check(inspect: dict[str, Any], homes: list[Path]) -> Check:
    found = []
    for item in inspect.get("Mounts") or [] if isinstance(inspect.get("Mounts"), list) else []:
        if not isinstance(item, dict) or item.get("Type") == "tmpfs" or not item.get("Source"):
            continue
        source = Path(str(item["Source"]))
        reason = sensitive_reason(source, homes)
        if reason is None and Path(str(item.get("Destination"))).name.endswith(".sock"):
            reason = "appears inside as a socket"
        if reason is not None:
            found.append(f"{source} at {item.get('Destination')} {reason}")
    expected = "no Docker socket, system folder, home or credential store"
    return _check("sensitive mounts", "inspect", expected, "; ".join(found) or "none", not found)


def _limit_checks(inspect: dict[str, Any], spec: ContainerSpec | None) -> list[Check]:
    host = _host(inspect)
    memory = _as_int(host.get("Memory"))
    swap = _as_int(host.get("MemorySwap"))
    pids = _as_int(host.get("PidsLimit"))
    nano_cpus = _as_int(host.get("NanoCpus"))
    cpus = nano_cpus / 1e9 if nano_cpus else None
    cpus_text = "unset" if cpus is None else f"{cpus:g}"
    if spec is not None:
        limits = spec.limits
        return [
            _check("memory limit", "inspect", str(limits.memory), _text(memory), memory == limits.memory),
            _check("swap", "inspect", f"none (MemorySwap {limits.memory})", _text(swap), swap == limits.memory),
            _check("pids limit", "inspect", str(limits.pids), _text(pids), pids == limits.pids),
            _check("cpu limit", "inspect", f"{limits.cpus:g}", cpus_text,
                   cpus is not None and abs(cpus - limits.cpus) < 0.001),
        ]
    return [
        _check("memory limit", "inspect", "a limit", _text(memory), memory is not None and memory > 0),
        _check("swap", "inspect", "none (MemorySwap equal to Memory)", _text(swap),
               swap is not None and swap == memory),
        _check("pids limit", "inspect", "a limit", _text(pids), pids is not None and pids > 0),
        _check("cpu limit", "inspect", "a limit", cpus_text, bool(cpus)),
    ]


def _as_int(value: Any) -> int | None:
    """Return an integer setting of inspect data, or None for a missing or mistyped one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _text(value: int | None) -> str:
    return "unset" if value is None else str(value)


def _runtime_check(inspect: dict[str, Any], spec: ContainerSpec | None) -> Check:
    runtime = _host(inspect).get("Runtime")
    if spec is not None:
        return _check("runtime", "inspect", spec.runtime, str(runtime), runtime == spec.runtime)
    # Without a plan, any runc or gVisor runtime is a runtime that orchestrate plans.
    known = isinstance(runtime, str) and (runtime == "runc" or runtime.startswith("runsc"))
    return _check("runtime", "inspect", "runc or runsc (gVisor)", str(runtime), known)


def _plan_check(inspect: dict[str, Any], spec: ContainerSpec | None) -> Check:
    if spec is None:
        return Check("every setting as planned", "plan", "the run folder's plan.json", "no plan found", "skip")
    drifts = posture_drift(spec, inspect)
    actual = "; ".join(f"{drift.setting}: {drift.actual} (planned {drift.expected})" for drift in drifts)
    return _check("every setting as planned", "plan", "no difference", actual or "no difference", not drifts)


def probe_checks(view: ProcView, inspect: dict[str, Any], spec: ContainerSpec | None) -> list[Check]:
    """Check the container's own view of its network, privileges, mounts and limits."""
    return [
        *_probe_network(view, spec),
        *_probe_privileges(view),
        *_probe_mounts(view, spec),
        *_probe_limits(view, inspect),
    ]


def _probe_network(view: ProcView, spec: ContainerSpec | None) -> list[Check]:
    interfaces = parse_interfaces(view.net_dev, view.if_inet6)
    routes = parse_routes(view.net_route, view.ipv6_route)
    if spec is not None and spec.security.network_mode != "none":
        # Behind the egress broker: one interface, on the agent's internal network. Docker still writes a default
        # route to the network's gateway address, which orchestrate leaves unassigned, so it leads nowhere.
        foreign = [route for route in routes if not route.endswith("dev eth0")]
        return [
            _check("interfaces", "/proc", "eth0, lo", ", ".join(interfaces) or "none", interfaces == ["eth0", "lo"]),
            _check("routes", "/proc", "through eth0 only", "; ".join(routes) or "none", not foreign),
            _check("network namespace", "/proc", "its own", _namespace_text(view.shares_host_network),
                   view.shares_host_network is False),
        ]
    return [
        _check("interfaces", "/proc", "lo", ", ".join(interfaces) or "none", interfaces == ["lo"]),
        _check("routes", "/proc", "none", "; ".join(routes) or "none", not routes),
        _check("network namespace", "/proc", "its own", _namespace_text(view.shares_host_network),
               view.shares_host_network is False),
    ]


def _namespace_text(shares_host_network: bool | None) -> str:
    if shares_host_network is None:
        return "unreadable (run validate as root to read the namespace link)"
    return "the host's" if shares_host_network else "its own"


def _capability_text(mask: int) -> str:
    if mask < 0:
        return "unreadable"
    names = [CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"cap_{bit}"
             for bit in range(mask.bit_length()) if mask >> bit & 1]
    return f"{mask:016x} ({', '.join(names)})" if names else "0"


def _probe_privileges(view: ProcView) -> list[Check]:
    processes = view.processes
    count = f"{len(processes)} process{'' if len(processes) == 1 else 'es'}"
    if not processes:
        reason = "no process could be read"
        return [_check(name, "/proc", "readable", reason, False)
                for name in ("capabilities", "no-new-privileges", "seccomp", "user")]

    capabilities = _by_process([
        (item.pid, f"{name} {_capability_text(value)}")
        for item in processes
        for name, value in (("CapEff", item.cap_effective), ("CapPrm", item.cap_permitted),
                            ("CapBnd", item.cap_bounding))
        if value != 0
    ])
    no_new_privileges = _by_process([(item.pid, f"NoNewPrivs {item.no_new_privs}") for item in processes
                                     if item.no_new_privs != "1"])
    # Mode 2 is a seccomp filter. Mode 0 means no filter (unconfined), and 1 is the strict mode no agent runs under.
    seccomp = _by_process([(item.pid, f"Seccomp {item.seccomp}") for item in processes if item.seccomp != "2"])
    found_root = []
    for item in processes:
        inside = [container_uid(uid, view.uid_map) for uid in item.uids]
        if not inside or any(uid is None or uid == 0 for uid in inside):
            found_root.append((item.pid, f"UIDs {' '.join(str(uid) for uid in inside) or 'unreadable'}"))
    root = _by_process(found_root)
    uids = sorted({uid for item in processes for uid in item.uids if uid is not None})
    return [
        _check("capabilities", "/proc", "CapEff, CapPrm and CapBnd 0 in every process",
               "; ".join(capabilities) or f"0 in {count}", not capabilities),
        _check("no-new-privileges", "/proc", "NoNewPrivs 1 in every process",
               "; ".join(no_new_privileges) or f"1 in {count}", not no_new_privileges),
        _check("seccomp", "/proc", "Seccomp 2 (filter) in every process", "; ".join(seccomp) or f"2 in {count}",
               not seccomp),
        _check("user", "/proc", "no process with UID 0 in the container",
               "; ".join(root) or f"UIDs {', '.join(map(str, uids))} (host)", not root),
    ]


def _by_process(findings: list[tuple[int, str]]) -> list[str]:
    """Join findings that several processes share into one text that lists their PIDs."""
    pids: dict[str, list[int]] = {}
    for pid, finding in findings:
        pids.setdefault(finding, []).append(pid)
    return [f"PID{'s' if len(found) > 1 else ''} {', '.join(map(str, found))}: {finding}"
            for finding, found in pids.items()]


def _probe_mounts(view: ProcView, spec: ContainerSpec | None) -> list[Check]:
    mounts = parse_mountinfo(view.mountinfo)
    # The last mount at a point is the visible one.
    by_point = {mount.mount_point: mount for mount in mounts}
    root = by_point.get("/")
    checks = [_check("read-only root", "/proc", "/ mounted ro", "no mount at /" if root is None else
                     ("ro" if root.read_only else "rw"), root is not None and root.read_only)]

    if spec is not None:
        planned = {mount.target: mount.read_only for mount in spec.mounts}
    else:
        planned = {**DEFAULT_BIND_MODES, **{target: False for target in DEFAULT_TMPFS_TARGETS}}
    wrong = []
    for target, read_only in sorted(planned.items()):
        mount = by_point.get(target)
        if mount is None:
            wrong.append(f"{target}: not mounted")
        elif mount.read_only != read_only:
            wrong.append(f"{target}: {'ro' if mount.read_only else 'rw'}, planned {'ro' if read_only else 'rw'}")
    extra = [point for point, mount in by_point.items()
             if point not in planned and not _is_engine_mount(point)
             # Without a plan, the masks that hide folders are recognised as empty read-only tmpfs mounts.
             and not (spec is None and mount.fs_type == "tmpfs" and mount.read_only)]
    wrong.extend(f"{point}: not planned" for point in sorted(extra))
    read_only_targets = sorted(target for target, read_only in planned.items() if read_only)
    expected = f"{len(planned)} planned mounts, ro only at {', '.join(read_only_targets)}; nothing else"
    actual = "; ".join(wrong) or f"as planned ({len(planned)} mounts)"
    checks.append(_check("mounts", "/proc", expected, actual, not wrong))

    # NOTE: mountinfo gives a bind mount's path inside its own file system, not the host path, so the host-path
    # rules (home, /etc, credential stores) apply to inspect's Mounts only; here only kinds of mount are judged.
    sensitive = []
    for mount in mounts:
        if mount.fs_type in ("proc", "sysfs") and not _is_engine_mount(mount.mount_point):
            sensitive.append(f"{mount.fs_type} at {mount.mount_point}")
        elif mount.mount_point.endswith(".sock") or mount.root.endswith(".sock"):
            sensitive.append(f"{mount.root} at {mount.mount_point}")
    checks.append(_check("sensitive mounts", "/proc", "no socket, proc or sysfs mount beyond the engine's own",
                         "; ".join(sensitive) or "none", not sensitive))
    return checks


def _is_engine_mount(point: str) -> bool:
    if point in ENGINE_MOUNT_POINTS:
        return True
    return any(point == tree or point.startswith(tree + "/") for tree in ENGINE_MOUNT_TREES)


def _probe_limits(view: ProcView, inspect: dict[str, Any]) -> list[Check]:
    host = _host(inspect)
    limits = view.limits
    memory = _as_int(host.get("Memory"))
    pids = _as_int(host.get("PidsLimit"))
    nano_cpus = _as_int(host.get("NanoCpus"))
    cpus = nano_cpus / 1e9 if nano_cpus else None

    memory_ok = (limits.memory is not None and memory is not None and memory > 0
                 and memory - MEMORY_ROUNDING <= limits.memory <= memory)
    pids_ok = limits.pids is not None and pids is not None and pids > 0 and limits.pids == pids
    cpus_ok = limits.cpus is not None and cpus is not None and abs(limits.cpus - cpus) < 0.01
    return [
        _check("memory limit", "cgroup", f"{_text(memory)} (from inspect)", _limit_text(limits.memory), memory_ok),
        _check("pids limit", "cgroup", f"{_text(pids)} (from inspect)", _limit_text(limits.pids), pids_ok),
        _check("cpu limit", "cgroup", f"{'unset' if cpus is None else f'{cpus:g}'} (from inspect)",
               _limit_text(limits.cpus), cpus_ok),
    ]


def _limit_text(value: float | None) -> str:
    if value is None:
        return "unreadable"
    if value == 0:
        return "no limit"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"
