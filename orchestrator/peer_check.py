"""Judge the process at the other end of a control connection by its PID namespace, not only its uid.

When orchestrate runs as an ordinary user, its agents run with that user's
uid. A folder that an agent sees read-only can come to contain another run's
control socket (that run's runs folder inside this agent's source), and a
read-only mount does not stop connect() on a Unix socket. The uid check alone
would then take the agent for the user and let it exec into the other run's
agents. Every agent runs in its own PID namespace, so a peer outside the run
process's PID namespace is rejected.
"""

from __future__ import annotations

import os


def foreign_namespace_reason(pid: int, uid: int) -> str | None:
    """Return why the peer `pid` may not use the socket, or None when it shares this process's PID namespace."""
    if pid <= 0:
        # SO_PEERCRED reports pid 0 for a peer whose PID namespace this process cannot see into.
        return "the peer's process is not visible from the run's PID namespace"
    try:
        own = pid_namespace("self")
        theirs = pid_namespace(str(pid))
    except FileNotFoundError:
        return f"the peer's process {pid} has exited"
    except PermissionError:
        if uid == 0:
            # An ordinary user's run cannot inspect root's processes. Agents never run as uid 0, so a root peer
            # is the administrator. NOTE: a root process of a container that is not orchestrate's passes here.
            return None
        return f"the peer's process {pid} cannot be inspected"
    if own != theirs:
        return f"the peer's process {pid} runs in another PID namespace, such as inside a container"
    return None


def pid_namespace(process: str) -> tuple[int, int]:
    """Return the device and inode that identify the PID namespace of `process` (a pid, or "self")."""
    details = os.stat(f"/proc/{process}/ns/pid")
    return details.st_dev, details.st_ino
