"""Which workspace files a container's processes still hold open for writing, read from the host's /proc.

A close or a rename does not prove that a file is complete: another descriptor
may still write it. Before a file is published while its agent runs, the
monitor checks here whether any process of the agent's container has it open
for writing, and leaves such files for the publish at the agent's exit.
"""

from __future__ import annotations

import os
from pathlib import Path

from .runtime.cgroups import CGROUP_ROOT, parse_membership

WRITE_MODES = os.O_WRONLY | os.O_RDWR


def open_for_writing(pid: int, prefix: str, *, cgroup_root: Path = CGROUP_ROOT,
                     proc: Path = Path("/proc")) -> set[str] | None:
    """Return the paths below `prefix`, relative to it, that a process of `pid`'s container has open for writing.

    `prefix` is a path inside the container. Return None when the container's processes cannot be read.
    """
    processes = container_processes(pid, cgroup_root=cgroup_root, proc=proc)
    if processes is None:
        return None
    busy: set[str] = set()
    start = prefix.rstrip("/") + "/"
    for process in processes:
        fd_folder = proc / str(process) / "fd"
        try:
            descriptors = os.listdir(fd_folder)
        except OSError:
            continue  # The process ended meanwhile.
        for descriptor in descriptors:
            try:
                target = os.readlink(fd_folder / descriptor)
            except OSError:
                continue
            if not target.startswith(start) or not _writable(proc / str(process) / "fdinfo" / descriptor):
                continue
            busy.add(target[len(start):].removesuffix(" (deleted)"))
    return busy


def container_processes(pid: int, *, cgroup_root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> list[int] | None:
    """Return every process in the pids cgroup of process `pid`, or None when it cannot be read."""
    if pid <= 0:
        return None
    try:
        paths = parse_membership((proc / str(pid) / "cgroup").read_text(encoding="utf-8"))
    except OSError:
        return None
    if "pids" in paths:
        procs = cgroup_root / "pids" / paths["pids"].lstrip("/") / "cgroup.procs"
    elif "" in paths:
        procs = cgroup_root / paths[""].lstrip("/") / "cgroup.procs"
    else:
        return None
    try:
        return [int(line) for line in procs.read_text(encoding="ascii").split()]
    except (OSError, ValueError):
        return None


def _writable(fdinfo: Path) -> bool:
    try:
        for line in fdinfo.read_text(encoding="ascii").splitlines():
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & WRITE_MODES)
    except (OSError, ValueError, IndexError):
        return True  # Unknown is treated as writing: the file waits for the agent's exit.
    return True
