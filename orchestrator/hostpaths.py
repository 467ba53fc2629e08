"""Rules for host paths that may be mounted into an agent container.

Every path is resolved with realpath before it is judged, so a symlink such as
`project/creds -> ~/.ssh` is judged by where it leads. A path is rejected when
it is, contains or lies inside a sensitive location. The home directory is the
exception: a path below it is fine, because projects usually live there, but
the home directory itself and its parents are rejected.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .layout import STATE_FOLDER

# Credential stores below a home directory.
CREDENTIAL_STORES = (
    ".ssh",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".kube",
    ".docker",
    ".gnupg",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".password-store",
    ".local/share/keyrings",
    # Coding agents' own logins and browser profiles with session cookies.
    ".claude",
    ".claude.json",
    ".codex",
    ".config/github-copilot",
    ".config/openai",
    ".config/google-chrome",
    ".config/chromium",
    ".mozilla",
)

# Writing into these lets an agent's files run on the host later: programs, libraries, services.
WRITE_PROTECTED = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/var", "/boot", "/srv")

# System locations that expose the host (or its container engine) when mounted.
SYSTEM_LOCATIONS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/var/run", "/run", "/var/lib/docker")

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")

# Files named like dotenv files hold secrets; the listed suffixes are templates without values.
DOTENV_TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist")

SOURCE_SCAN_LIMIT = 500_000


@dataclass(frozen=True)
class Finding:
    path: Path
    reason: str
    # True for a folder to hide behind an empty mount rather than a reason to reject the source.
    mask: bool = False


def home_directories() -> list[Path]:
    """Return the home directories to protect: the invoking user's, the sudo caller's, and every login user's.

    Every user's home counts because orchestrate may run as root, which can read all of them.
    """
    homes = {Path(os.path.realpath(Path.home()))}
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            homes.add(Path(os.path.realpath(pwd.getpwnam(sudo_user).pw_dir)))
        except KeyError:
            pass
    for entry in pwd.getpwall():
        if entry.pw_uid != 0 and entry.pw_uid < 1000:
            continue
        home = Path(os.path.realpath(entry.pw_dir))
        if home != Path("/") and home.is_dir():
            homes.add(home)
    return sorted(homes)


def is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def sensitive_reason(path: Path, homes: Iterable[Path]) -> str | None:
    """Return why mounting `path` (already resolved) would expose the host, or None."""
    if path == Path("/"):
        return "is the root of the host's file system"
    for socket_path in DOCKER_SOCKETS:
        if path in {Path(socket_path), Path(os.path.realpath(socket_path))}:
            return "is the container engine's socket, which is root on the host"
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            return "is a Unix socket, usable even through a read-only mount"
    except OSError:
        pass

    for location in (*SYSTEM_LOCATIONS, *DOCKER_SOCKETS):
        # Judge against both the literal and the resolved form: /var/run is often a link to /run.
        for candidate in {Path(location), Path(os.path.realpath(location))}:
            if path == candidate:
                return f"is {candidate}, which exposes the host"
            if is_within(path, candidate):
                return f"lies inside {candidate}, which exposes the host"
            if is_within(candidate, path):
                return f"contains {candidate}, which exposes the host"

    for home in homes:
        if is_within(home, path):
            return f"is or contains the home directory {home} and its credentials"
        for store in CREDENTIAL_STORES:
            credential = home / store
            if path == credential:
                return f"is the credential store {credential}"
            if is_within(path, credential):
                return f"lies inside the credential store {credential}"
            if is_within(credential, path):
                return f"contains the credential store {credential}"

    if path.name == ".env" or is_dotenv(path.name):
        return "is a .env file, which usually holds secrets"
    return None


def writable_reason(path: Path, homes: Iterable[Path]) -> str | None:
    """Return why `path` (already resolved) must not be written by an agent or the publisher, or None."""
    reason = sensitive_reason(path, homes)
    if reason:
        return reason
    for location in WRITE_PROTECTED:
        for candidate in {Path(location), Path(os.path.realpath(location))}:
            if is_within(path, candidate):
                return f"lies inside {candidate}, where written files can run on the host"
    if ".git" in path.parts:
        return "lies inside a .git folder, whose hooks and config run on the host"
    for home in homes:
        if home in path.parents:
            top = path.relative_to(home).parts[0]
            if top.startswith("."):
                return f"lies inside {home / top}, a configuration folder whose files can run on the host"
    return None


def is_dotenv(name: str) -> bool:
    if name in (".env", ".envrc"):
        return True
    return name.startswith(".env.") and not name.endswith(DOTENV_TEMPLATE_SUFFIXES)


def scan_source(root: Path, *, skip: Iterable[Path] = ()) -> Iterator[Finding]:
    """Yield entries under `root` that must never reach an agent: sockets, dotenv files, mounts.

    A Unix socket stays usable through a read-only bind mount, so a socket
    anywhere in the source is as dangerous as the Docker socket itself.
    """
    skipped = {Path(os.path.realpath(path)) for path in skip}
    mount_points = _mount_points_below(root)
    for mount_point in mount_points:
        if not any(is_within(mount_point, masked) for masked in skipped):
            yield Finding(
                mount_point,
                "is a mount point inside the source; Docker 20.10 mounts nested mounts "
                "writable even in a read-only bind",
            )

    pending = [root]
    visited = 0
    root_device = root.stat().st_dev
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            yield Finding(Path(folder), f"cannot be read ({exc.strerror}); fix its permissions")
            continue
        for entry in entries:
            visited += 1
            if visited > SOURCE_SCAN_LIMIT:
                yield Finding(root, f"holds more than {SOURCE_SCAN_LIMIT} entries; point source at a smaller folder")
                return
            entry_path = Path(entry.path)
            if entry_path in skipped:
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISSOCK(mode):
                yield Finding(entry_path, "is a Unix socket, usable even through a read-only mount")
            elif stat.S_ISREG(mode) and is_dotenv(entry.name):
                yield Finding(entry_path, "is a .env file, which usually holds secrets")
            elif stat.S_ISDIR(mode) and entry.name == STATE_FOLDER and _is_state_folder(entry_path):
                # Another output tree's locks and ledger: an agent that can open a lock file can hold it.
                yield Finding(entry_path, "is an output tree's state folder", mask=True)
            elif stat.S_ISDIR(mode):
                # A folder on another device is a mount point, even one that mountinfo did not name.
                if entry.stat(follow_symlinks=False).st_dev != root_device:
                    if not any(is_within(entry_path, point) for point in mount_points):
                        yield Finding(entry_path, "is a mount point inside the source; Docker 20.10 mounts nested "
                                      "mounts writable even in a read-only bind")
                    continue
                pending.append(entry_path)


def _is_state_folder(path: Path) -> bool:
    return (path / "ledger.jsonl").exists() or (path / "locks").is_dir()


def _mount_points_below(root: Path) -> list[Path]:
    try:
        with open("/proc/self/mountinfo", "rb") as mountinfo:
            lines = mountinfo.readlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        # The mount point is field 5: raw bytes, with space, tab, newline and backslash octal-escaped.
        raw = re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), fields[4])
        point = Path(os.fsdecode(raw))
        if point != root and root in point.parents:
            points.append(point)
    return points
