"""Fetch Debian packages on the host for an image build whose RUN steps have no network.

The host's apt resolves what a package needs against the base image's own dpkg status file
(`apt-get --simulate -o Dir::State::status=...`). The result is exactly what the base lacks, at the
versions in the host's bookworm package lists. `apt-get download` then fetches those .deb files into
the cache folder and checks them against the signed lists. Versions are not pinned:
Debian's mirrors keep only the newest bookworm version of a package, so a pin would stop
resolving after the next security update. The versions installed are recorded in the image's
dpkg database (`dpkg-query -W git`) and logged at each build.
"""

from __future__ import annotations

import io
import logging
import platform
import re
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from .errors import EnvironmentProblem

log = logging.getLogger(__name__)

APT_TIMEOUT = 600
# The label of the container, created and never started, that the base image's files are read from.
READ_LABEL = "orchestrate.images"
# The line `apt-get --simulate` prints for each package it would unpack:
# "Inst NAME [OLD VERSION] (VERSION RELEASE, ... [ARCH])". The old version appears only for an upgrade.
INST_LINE = re.compile(r"^Inst (?P<name>\S+) (?:\[(?P<old>[^\]]+)\] )?\((?P<version>\S+) .*\[(?P<arch>[^\]]+)\]\)")


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str
    upgrade_of: str | None = None

    @property
    def filename(self) -> str:
        """The name `apt-get download` gives the file: the epoch's ':' is written '%3a'."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def parse_simulated_installs(output: str) -> list[DebPackage]:
    """Return the packages, in apt's order, that `apt-get --simulate install` would unpack."""
    packages = []
    for line in output.splitlines():
        match = INST_LINE.match(line)
        if match:
            packages.append(DebPackage(match["name"], match["version"], match["arch"], match["old"]))
    return packages


def resolve(names: Sequence[str], *, base_status: Path) -> list[DebPackage]:
    """Return the packages `names` and every package they depend on that the status file `base_status` lacks.

    Recommended packages are left out, as an image install with --no-install-recommends would.
    """
    output = _apt([
        "apt-get", "--simulate", "--no-install-recommends", "--quiet",
        "-o", f"Dir::State::status={base_status}", "-o", "Debug::NoLocking=true",
        "install", *names,
    ], f"resolve {' '.join(names)} against the base image's packages", cwd=None)
    return parse_simulated_installs(output)


def download(packages: Sequence[DebPackage], cache: Path) -> list[Path]:
    """Fetch each package's .deb into `cache` with `apt-get download`, unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    absent = [package for package in packages if not (cache / package.filename).is_file()]
    if absent:
        _apt(["apt-get", "download", "--quiet", *[package.spec for package in absent]],
             f"fetch {len(absent)} Debian package(s) with apt-get", cwd=cache)

    files = [cache / package.filename for package in packages]
    for path in files:
        if not path.is_file():
            raise EnvironmentProblem(f"apt-get download wrote no {path.name} into {cache}; "
                                     "remove the folder and try again")
    return files


def fetch(names: Sequence[str], *, base_status: Path, cache: Path) -> list[Path]:
    """Resolve the packages `names` against the base's dpkg status file and fetch the .deb files it lacks."""
    packages = resolve(names, base_status=base_status)
    log.info("Debian packages for the image: %s", ", ".join(package.spec for package in packages) or "none")
    return download(packages, cache)


def check_same_release(*, host: str, base: str) -> None:
    """Raise EnvironmentProblem when the host's Debian release differs from the base image's."""
    if host != base:
        raise EnvironmentProblem(f"the host runs Debian '{host or 'unknown'}' but the base image is Debian '{base}'; "
                                 f"build the profile images on a Debian {base} host, whose apt lists match the image")


def host_release() -> str:
    """Return the codename of the host's Debian release ('' on a host that is not Debian-like)."""
    try:
        return platform.freedesktop_os_release().get("VERSION_CODENAME", "")
    except OSError:
        return ""


def read_base_packages(client: docker.DockerClient, base: str, folder: Path) -> tuple[str, Path]:
    """Copy the dpkg status file of image `base` into `folder`; return its release codename and the file.

    The files are read from a created container that never starts, so nothing of the image runs.
    """
    try:
        container = client.containers.create(base, command=["true"], labels={READ_LABEL: "read-base"},
                                             network_disabled=True)
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(f"could not create a container of {base} to read its package list: {exc}") from exc
    try:
        status = _read_file(container, "/var/lib/dpkg/status")
        os_release = _read_file(container, "/usr/lib/os-release").decode("utf-8", "replace")
    finally:
        container.remove(force=True)

    target = folder / "base-dpkg-status"
    target.write_bytes(status)
    codename = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)", os_release, re.MULTILINE)
    return (codename.group(1) if codename else ""), target


def _read_file(container: Container, path: str) -> bytes:
    try:
        stream, _stat = container.get_archive(path)
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(f"reading {path} from the base image failed: {exc}; profile images need a Debian "
                                 "base, so rebuild it with `orchestrate images build`") from exc
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        member = archive.next()
        source = archive.extractfile(member) if member is not None else None
        if source is None:
            raise EnvironmentProblem(f"{path} in the base image is not a regular file; rebuild the base image")
        return source.read()


def _apt(command: list[str], action: str, *, cwd: Path | None) -> str:
    log.info("%s: %s", action, " ".join(command))
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=APT_TIMEOUT, cwd=cwd)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{action} needs apt-get, which is not installed; the profile images install "
                                 "git from Debian bookworm packages, so build them on a Debian bookworm host") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{action} timed out after {APT_TIMEOUT} s; check the Debian mirror "
                                 "connection") from exc
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        raise EnvironmentProblem(f"{action} failed with exit code {completed.returncode}:\n{tail}\n"
                                 "run `apt-get update` and check that the host's package lists are Debian bookworm's")
    return completed.stdout
