"""Send SIGHUP to a user's exec by the host pid the engine reports, only if that pid is still the exec's process.

The engine's pid is a number in the engine's PID namespace, read some
milliseconds before the signal goes out. By then the process may have ended
and its pid been reused, and an orchestrate that runs in another PID namespace
than the engine (a container given the engine's socket) sees another process
under that number. So the signal goes through a pidfd, which stays bound to
one process, and only to a process that belongs to the container: runc puts the
exec in the container's cgroup, and gVisor's `runsc exec` names the container
on its command line (both measured on Docker 20.10).
"""

from __future__ import annotations

import os
import signal


def hang_up(pid: int, container_id: str) -> str | None:
    """Send SIGHUP to `pid` if it is a process of the container; return why it was not sent, or None."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return f"process {pid} has ended"
    except OSError as exc:
        return f"process {pid} cannot be opened: {exc.strerror}"
    try:
        # Read after the pidfd is open: a pid reused after this point leaves the pidfd's process gone, not swapped.
        if not belongs_to_container(pid, container_id):
            return f"process {pid} is not a process of container {container_id[:12]}"
        signal.pidfd_send_signal(pidfd, signal.SIGHUP)
    except ProcessLookupError:
        return f"process {pid} has ended"
    except PermissionError as exc:
        return f"process {pid} cannot be signalled: {exc.strerror}"
    finally:
        os.close(pidfd)
    return None


def belongs_to_container(pid: int, container_id: str) -> bool:
    """Return whether `pid` is in the container's cgroup (runc) or names the container in its argv (runsc exec)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as cgroups:
            if container_id in cgroups.read():
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as command_line:
            words = command_line.read().split(b"\0")
    except OSError:
        return False
    return container_id.encode() in words
