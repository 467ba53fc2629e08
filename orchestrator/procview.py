"""Read a running container's own view of itself from the host, through /proc/<pid>/.

`orchestrate validate` must not exec into an agent container: the safety
monitor treats an exec as tampering and stops the run. The kernel shows the
same facts from outside instead. /proc/<pid>/status has the capability sets,
NoNewPrivs and the seccomp mode. /proc/<pid>/net/ shows the interfaces and
routes of the process's network namespace, and /proc/<pid>/mountinfo the
mounts of its mount namespace with their ro/rw flags. The parsers below take
plain text, so the checks can be tested on synthesized files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import EffectiveLimits
from .runtime.cgroups import CGROUP_ROOT, parse_membership, read_effective_limits

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessStatus:
    """The security fields of one process's /proc/<pid>/status."""

    pid: int
    # Real, effective, saved and file-system UIDs, in the host's user namespace.
    uids: tuple[int, ...]
    cap_effective: int
    cap_permitted: int
    cap_bounding: int
    no_new_privs: str
    seccomp: str


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where a mount appears, what it shows and its per-mount options."""

    mount_point: str
    # The path inside the mounted file system that appears at mount_point (a bind mount's source there).
    root: str
    fs_type: str
    source: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class ProcView:
    """The container's view of itself, read from the host; texts are kept raw for the parsers."""

    pid: int
    processes: tuple[ProcessStatus, ...]
    net_dev: str
    net_route: str
    if_inet6: str
    ipv6_route: str
    mountinfo: str
    uid_map: str
    # Whether the container's network namespace is the one this process (on the host) lives in;
    # None when the kernel denies the lookup, which needs ptrace access to the container's init.
    shares_host_network: bool | None
    limits: EffectiveLimits = field(default_factory=lambda: EffectiveLimits(pids=None, memory=None))


class ProcUnavailable(Exception):
    """The container's processes cannot be read from this machine; the message gives the reason."""


def read_proc_view(pid: int, container_id: str, *, proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> ProcView:
    """Read the /proc view of the container whose init process is `pid`.

    Raises ProcUnavailable when the process is gone, or belongs to another
    container (a reused PID, or an engine on another machine).
    """
    folder = proc / str(pid)
    try:
        membership = (folder / "cgroup").read_text(encoding="utf-8")
    except OSError as exc:
        raise ProcUnavailable(f"process {pid} cannot be read ({exc.strerror}); the container may have exited, "
                              "or its engine runs on another machine") from exc
    if container_id not in membership:
        raise ProcUnavailable(f"process {pid} is not in the cgroup of container {container_id[:12]}; "
                              "its engine may run on another machine or in another PID namespace")

    try:
        view = ProcView(
            pid=pid,
            processes=tuple(_read_statuses(_container_pids(pid, membership, proc, cgroup_root), proc)),
            net_dev=_read(folder / "net" / "dev"),
            net_route=_read(folder / "net" / "route"),
            if_inet6=_read(folder / "net" / "if_inet6", missing_ok=True),
            ipv6_route=_read(folder / "net" / "ipv6_route", missing_ok=True),
            mountinfo=_read(folder / "mountinfo"),
            uid_map=_read(folder / "uid_map"),
            shares_host_network=_same_namespace(folder / "ns" / "net", Path("/proc/self/ns/net")),
            limits=read_effective_limits(pid, cgroup_root=cgroup_root, proc=proc),
        )
    except OSError as exc:
        raise ProcUnavailable(f"reading /proc/{pid} failed: {exc}; the container may have exited") from exc
    return view


def _read(path: Path, *, missing_ok: bool = False) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        # if_inet6 and ipv6_route are absent when the kernel has IPv6 off.
        if missing_ok:
            return ""
        raise


def _same_namespace(first: Path, second: Path) -> bool | None:
    try:
        return os.readlink(first) == os.readlink(second)
    except PermissionError:
        return None


def _container_pids(pid: int, membership: str, proc: Path, cgroup_root: Path) -> list[int]:
    """Return every process of the container, from its pids cgroup; only `pid` when that cannot be read.

    Every process counts, not only the init: a `docker exec --privileged` adds a
    process with full capabilities beside an init that has none.
    """
    paths = parse_membership(membership)
    candidates = []
    if "pids" in paths:
        candidates.append(cgroup_root / "pids" / paths["pids"].lstrip("/") / "cgroup.procs")
    if "" in paths:
        candidates.append(cgroup_root / paths[""].lstrip("/") / "cgroup.procs")
    for candidate in candidates:
        try:
            found = [int(line) for line in candidate.read_text(encoding="ascii").split()]
        except (OSError, ValueError):
            continue
        if found:
            return sorted(set(found) | {pid})
    return [pid]


def _read_statuses(pids: list[int], proc: Path) -> list[ProcessStatus]:
    statuses = []
    for pid in pids:
        try:
            text = (proc / str(pid) / "status").read_text(encoding="utf-8")
        except FileNotFoundError:
            # A process may exit between the listing and the read; a gone init fails the other reads.
            continue
        statuses.append(parse_status(pid, text))
    return statuses


def parse_status(pid: int, text: str) -> ProcessStatus:
    """Parse the fields of /proc/<pid>/status that the checks need; a missing field reads as all bits set."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()

    def mask(name: str) -> int:
        try:
            return int(fields[name], 16)
        except (KeyError, ValueError):
            # Unknown means unproven, so it must fail the check rather than pass it.
            return -1

    try:
        uids = tuple(int(item) for item in fields.get("Uid", "").split())
    except ValueError:
        uids = ()
    return ProcessStatus(
        pid=pid,
        uids=uids,
        cap_effective=mask("CapEff"),
        cap_permitted=mask("CapPrm"),
        cap_bounding=mask("CapBnd"),
        no_new_privs=fields.get("NoNewPrivs", "missing"),
        seccomp=fields.get("Seccomp", "missing"),
    )


def parse_interfaces(net_dev: str, if_inet6: str = "") -> list[str]:
    """Return the interface names of /proc/net/dev and /proc/net/if_inet6, sorted, each once."""
    names = set()
    for line in net_dev.splitlines()[2:]:
        name, separator, _ = line.partition(":")
        if separator:
            names.add(name.strip())
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) >= 6:
            names.add(fields[5])
    return sorted(names)


def parse_routes(net_route: str, ipv6_route: str = "") -> list[str]:
    """Return a route per line of /proc/net/route, and each IPv6 route through a device other than lo."""
    routes = []
    for line in net_route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            prefix = bin(int(fields[7], 16)).count("1") if _is_hex(fields[7]) else "?"
            routes.append(f"{_ipv4(fields[1])}/{prefix} via {_ipv4(fields[2])} dev {fields[0]}")
    for line in ipv6_route.splitlines():
        fields = line.split()
        # The kernel keeps local and unreachable entries for lo even with no network at all.
        if len(fields) >= 10 and fields[9] != "lo":
            prefix = int(fields[1], 16) if _is_hex(fields[1]) else "?"
            routes.append(f"{fields[0]}/{prefix} dev {fields[9]}")
    return routes


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _ipv4(hex_text: str) -> str:
    try:
        value = int(hex_text, 16)
    except ValueError:
        return hex_text
    # The kernel prints the address in host byte order, little-endian on x86 and arm64.
    return ".".join(str((value >> shift) & 0xFF) for shift in (0, 8, 16, 24))


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 3:
            continue
        mounts.append(Mount(
            mount_point=_unescape(fields[4]),
            root=_unescape(fields[3]),
            fs_type=fields[separator + 1],
            source=_unescape(fields[separator + 2]),
            options=tuple(fields[5].split(",")),
        ))
    return mounts


def container_uid(host_uid: int, uid_map: str) -> int | None:
    """Translate a host UID into the container's user namespace through its uid_map; None when unmapped."""
    for line in uid_map.splitlines():
        try:
            inside, outside, count = (int(item) for item in line.split())
        except ValueError:
            continue
        if outside <= host_uid < outside + count:
            return inside + host_uid - outside
    return None
