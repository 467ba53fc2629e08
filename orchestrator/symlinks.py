"""Decide whether a symlink in a workspace leads out of it, the way the kernel would resolve it.

Normalizing a target as text is not enough: with `s -> .` in a folder, the
target `s/s/s/../../../../etc` normalizes to a path inside the workspace, yet
the kernel resolves each `s` to the folder itself and then climbs out. So the
target is resolved one component at a time, reading every link on the way,
with the workspace as the root.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .layout import OUTPUT_TARGET

# The flags the publisher opens folders with; repeated so this module needs no publish import.
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Inside the container the workspace is OUTPUT_TARGET, so an absolute link there points inside it.
CONTAINER_WORKSPACE = OUTPUT_TARGET
# The kernel gives up after 40 links in one lookup (ELOOP); a longer chain is treated as an escape.
MAX_LINKS = 40
# Path components resolved for one link, counting those that links on the way add. Real targets need a few
# dozen; a target built to make the check slow (kilobytes of d/../ through nested links) is an escape.
MAX_STEPS = 1024

# Returns the target of the link at a workspace-relative path, or None when that path is no link.
ReadLink = Callable[[str], "str | None"]


def link_escapes(parts: tuple[str, ...], target: str, readlink: ReadLink | None = None) -> bool:
    """Return whether a link in folder `parts` with `target` resolves outside the workspace.

    Without `readlink` the target is judged as text only, which is right only when no component of it is a
    link itself.
    """
    stack: list[str] = list(parts)
    pending = _start(target, stack)
    if pending is None:
        return True
    links = steps = 0
    while pending:
        steps += 1
        if steps > MAX_STEPS:
            return True
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if not stack:
                return True
            stack.pop()
            continue
        inner = readlink("/".join([*stack, name])) if readlink is not None else None
        if inner is None:
            stack.append(name)
            continue
        links += 1
        if links > MAX_LINKS:
            return True
        rest = _start(inner, stack)
        if rest is None:
            return True
        pending = rest + pending
    return False


def _start(target: str, stack: list[str]) -> list[str] | None:
    """Return the components to resolve; reset `stack` for an absolute target; None when it points outside."""
    components = target.split("/")
    if not target.startswith("/"):
        return components
    names = [name for name in components if name not in ("", ".")]
    prefix = [name for name in CONTAINER_WORKSPACE.split("/") if name]
    if names[:len(prefix)] != prefix:
        return None
    stack.clear()
    # What follows the mount point is resolved like the rest: it may hold links and '..' of its own.
    return names[len(prefix):]


def reader_under(root_fd: int) -> ReadLink:
    """Return a `readlink` for paths under the folder `root_fd`, opening every folder on the way with O_NOFOLLOW."""

    def readlink(path: str) -> str | None:
        *folders, name = path.split("/")
        fd = root_fd
        try:
            for folder in folders:
                child = os.open(folder, DIRECTORY_FLAGS, dir_fd=fd)
                if fd != root_fd:
                    os.close(fd)
                fd = child
            return os.readlink(name, dir_fd=fd)
        except OSError:
            # Not a link, missing, or a folder on the way that is a link or unreadable: a plain name to resolve.
            return None
        finally:
            if fd != root_fd:
                os.close(fd)

    return readlink
