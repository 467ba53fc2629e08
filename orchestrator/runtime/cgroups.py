"""Read the limits that the kernel really enforces on a container, from its cgroup files.

An engine can accept a pids or memory limit and then drop it with only a
warning (a kernel without the controller, a missing cgroup mount). Reading the
cgroup back is the only proof that a limit is in force. Both cgroup v1 (one
hierarchy per controller) and v2 (one unified hierarchy) are handled.
"""

from __future__ import annotations

from pathlib import Path

from . import EffectiveLimits

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no memory limit" as a page-aligned number near 2**63.
V1_UNLIMITED_FLOOR = 2**62


def read_effective_limits(pid: int, *, cgroup_root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> EffectiveLimits:
    """Return the pids and memory limits of the cgroup of process `pid`.

    A limit is None when it cannot be read, because the process is gone or
    this process runs in another PID namespace than the engine. A limit is 0
    when the cgroup sets none.
    """
    if pid <= 0:
        return EffectiveLimits(pids=None, memory=None)
    try:
        membership = (proc / str(pid) / "cgroup").read_text(encoding="utf-8")
    except OSError:
        return EffectiveLimits(pids=None, memory=None)

    paths = parse_membership(membership)
    if "" in paths:
        unified = cgroup_root / paths[""].lstrip("/")
        if (unified / "cgroup.controllers").exists() and "pids" not in paths:
            return EffectiveLimits(
                pids=_read_limit(unified / "pids.max"),
                memory=_read_limit(unified / "memory.max"),
                cpus=_read_v2_cpus(unified / "cpu.max"),
            )
    pids = (
        _read_limit(cgroup_root / "pids" / paths["pids"].lstrip("/") / "pids.max")
        if "pids" in paths
        else None
    )
    memory = (
        _read_limit(cgroup_root / "memory" / paths["memory"].lstrip("/") / "memory.limit_in_bytes")
        if "memory" in paths
        else None
    )
    cpu_path = paths.get("cpu") or paths.get("cpuacct")
    cpus = _read_v1_cpus(cgroup_root / "cpu" / cpu_path.lstrip("/")) if cpu_path is not None else None
    return EffectiveLimits(pids=pids, memory=memory, cpus=cpus)


def _read_v1_cpus(folder: Path) -> float | None:
    quota = _read_number(folder / "cpu.cfs_quota_us")
    period = _read_number(folder / "cpu.cfs_period_us")
    if quota is None or period is None or period <= 0:
        return None
    return 0.0 if quota < 0 else quota / period


def _read_v2_cpus(path: Path) -> float | None:
    try:
        quota, period = path.read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return 0.0
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _read_number(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def parse_membership(text: str) -> dict[str, str]:
    """Map each controller of a /proc/PID/cgroup file to its path; "" is the v2 hierarchy."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if not controllers:
            paths[""] = path
            continue
        for controller in controllers.split(","):
            paths[controller] = path
    return paths


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if text == "max":
        return 0
    try:
        value = int(text)
    except ValueError:
        return None
    return 0 if value >= V1_UNLIMITED_FLOOR else value
