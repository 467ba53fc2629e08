"""Build the image of an agent profile with no registry reachable from the build.

A profile image starts FROM the hardened base and adds one agent CLI at a pinned
version. RUN steps of an offline build have no network, so the host fetches the
packages first with their ordinary clients. `npm pack` fetches the npm CLIs,
whose platform packages contain a self-contained native program that needs no
Node.js. `pip download` and `pip install --target` fetch and install aider, a
Python program, for the base image's Python 3.11. Every profile image also gets
git, which the base lacks and coding agents use on their source copy: the host's
apt fetches it and the libraries it needs as .deb files (see debian_packages.py).
The fetched files go into a copy of `sandbox_images/<profile>/` under
`packages/`, and the Dockerfile only COPYs them (the .deb files into a build
stage that installs them; see sandbox_images/shared/stage-debs.sh). Downloads
are kept in the cache folder, so a rebuild fetches nothing from npm or PyPI.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from . import debian_packages
from .errors import EnvironmentProblem, InputError
from .images import IMAGES_DIR, ImageRecipe, base_image_of, build_recipe

log = logging.getLogger(__name__)

# npm's name of this machine's processor in the CLIs' platform packages, and pip's platform tags for it.
NPM_ARCH = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}
PIP_PLATFORMS = {
    "x64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64", "linux_aarch64"),
}
# The Python of orchestrate/base (Debian bookworm's python3).
BASE_PYTHON = "3.11"
FETCH_TIMEOUT = 900
# Debian packages every profile image gets; their dependencies that the base lacks come with them.
AGENT_DEBS = ("git",)
# The script that installs the .deb files in a build stage, and git's system settings (/etc/gitconfig);
# both are copied next to the .deb files into every context.
STAGE_SCRIPT = IMAGES_DIR / "shared" / "stage-debs.sh"
GIT_CONFIG = IMAGES_DIR / "shared" / "gitconfig"


@dataclass(frozen=True)
class NpmProgram:
    """One native program taken from an npm platform package: `package@version`, member `member` of the tarball."""

    package: str
    version: str
    member: str
    target: str


@dataclass(frozen=True)
class PypiProgram:
    requirement: str


@dataclass(frozen=True)
class ProfileImage:
    profile: str
    tag: str
    programs: tuple[NpmProgram | PypiProgram, ...]
    debs: tuple[str, ...] = AGENT_DEBS

    @property
    def recipe(self) -> ImageRecipe:
        return ImageRecipe(self.tag, IMAGES_DIR / self.profile, f"agent image of the {self.profile} profile")


def _images(arch: str) -> dict[str, ProfileImage]:
    codex_triple = {"x64": "x86_64-unknown-linux-musl", "arm64": "aarch64-unknown-linux-musl"}[arch]
    return {
        "claude-code": ProfileImage("claude-code", "orchestrate/claude-code:2.1.332", (
            NpmProgram(f"@anthropic-ai/claude-code-linux-{arch}", "2.1.332", "package/claude", "claude"),
        )),
        "copilot": ProfileImage("copilot", "orchestrate/copilot:1.0.102", (
            NpmProgram(f"@github/copilot-linux-{arch}", "1.0.102", "package/copilot", "copilot"),
        )),
        # The Linux builds of codex are published as versions of @openai/codex itself, tagged by platform.
        "codex": ProfileImage("codex", "orchestrate/codex:0.171.0", tuple(
            NpmProgram("@openai/codex", f"0.171.0-linux-{arch}", f"package/vendor/{codex_triple}/{member}", target)
            for member, target in (
                ("bin/codex", "codex"),
                ("bin/codex-code-mode-host", "codex-code-mode-host"),
                ("codex-path/rg", "rg"),
            )
        )),
        "aider": ProfileImage("aider", "orchestrate/aider:0.86.2", (PypiProgram("aider-chat==0.86.2"),)),
    }


def machine_arch() -> str:
    arch = NPM_ARCH.get(platform.machine())
    if arch is None:
        raise EnvironmentProblem(f"profile images exist for x86_64 and arm64 only, not {platform.machine()}")
    return arch


def profile_images() -> dict[str, ProfileImage]:
    """Return the image of every profile that has one, for this machine's processor."""
    return _images(machine_arch())


def image_for(profile: str) -> ProfileImage:
    images = profile_images()
    if profile not in images:
        raise InputError(f"profile '{profile}' has no image to build; use one of: {', '.join(sorted(images))}")
    return images[profile]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestrate" / "packages"


def prepare_context(image: ProfileImage, scratch: Path, *, cache: Path, debs: Sequence[Path] = ()) -> Path:
    """Copy the profile's Dockerfile folder to `scratch` and add the fetched programs under packages/.

    `debs` are .deb files already fetched; they go to packages/debs/ with the script that installs them.
    """
    source = image.recipe.context
    if not (source / "Dockerfile").is_file():
        raise EnvironmentProblem(f"{source / 'Dockerfile'} is missing; run orchestrate from a checkout of the project")
    context = scratch / image.profile
    shutil.copytree(source, context)
    packages = context / "packages"
    packages.mkdir(exist_ok=True)
    for program in image.programs:
        if isinstance(program, NpmProgram):
            tarball = _npm_pack(program, cache)
            _extract_member(tarball, program.member, packages / program.target)
        else:
            _pip_install(program, cache, packages / "site")
    add_debs(debs, packages / "debs")
    return context


def add_debs(debs: Sequence[Path], folder: Path) -> None:
    """Make `folder` hold the .deb files `debs`, the script that installs them and git's settings."""
    # The Dockerfiles COPY packages/debs, so the folder exists even with nothing to install.
    folder.mkdir()
    shutil.copy2(STAGE_SCRIPT, folder / STAGE_SCRIPT.name)
    shutil.copy2(GIT_CONFIG, folder / GIT_CONFIG.name)
    for deb in debs:
        shutil.copy2(deb, folder / deb.name)


def _run(command: list[str], what: str) -> str:
    log.info("%s: %s", what, " ".join(command))
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=FETCH_TIMEOUT)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what} needs {command[0]}, which is not installed; install it "
                                 "(npm comes with Node.js, pip with Python)") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{what} timed out after {FETCH_TIMEOUT} s; check the registry connection") from exc
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        raise EnvironmentProblem(f"{what} failed with exit code {completed.returncode}:\n{tail}\n"
                                 "check that the package registry is reachable")
    return completed.stdout


def _npm_pack(program: NpmProgram, cache: Path) -> Path:
    folder = cache / "npm"
    folder.mkdir(parents=True, exist_ok=True)
    # npm pack names the tarball after the package: the scope without '@', '/' as '-', then the version.
    name = program.package.lstrip("@").replace("/", "-")
    tarball = folder / f"{name}-{program.version}.tgz"
    if not tarball.is_file():
        spec = f"{program.package}@{program.version}"
        _run(["npm", "pack", spec, "--pack-destination", str(folder), "--silent"], f"fetch {spec} with npm")
    if not tarball.is_file():
        raise EnvironmentProblem(f"npm pack wrote no {tarball.name} into {folder}; remove the folder and try again")
    return tarball


def _extract_member(tarball: Path, member: str, target: Path) -> None:
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            info = archive.getmember(member)
        except KeyError:
            raise EnvironmentProblem(f"{tarball.name} has no {member}; the package layout changed, so update "
                                     "orchestrator/profile_images.py") from None
        source = archive.extractfile(info)
        if source is None or not info.isfile():
            raise EnvironmentProblem(f"{member} in {tarball.name} is not a regular file")
        with source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    target.chmod(0o755)


def _pip_install(program: PypiProgram, cache: Path, site: Path) -> None:
    arch = machine_arch()
    wheels = cache / "pypi" / program.requirement.replace("==", "-")
    platforms = [option for tag in PIP_PLATFORMS[arch] for option in ("--platform", tag)]
    binary_only = ["--only-binary=:all:", "--python-version", BASE_PYTHON, "--implementation", "cp", *platforms]
    if not any(wheels.glob("*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        _run([*_pip(), "download", "--quiet", "--dest", str(wheels), *binary_only, program.requirement],
             f"fetch {program.requirement} with pip")
    # Installed from the downloaded wheels alone, for the base image's Python and processor.
    _run([*_pip(), "install", "--quiet", "--no-index", "--find-links", str(wheels), "--target", str(site),
          "--no-compile", *binary_only, program.requirement], f"install {program.requirement} into the build context")


def _pip() -> list[str]:
    # The pip of orchestrate's own Python, which every install of orchestrate has.
    return [sys.executable, "-m", "pip"]


def with_context(image: ProfileImage, *, base_status: Path) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """Return a scratch folder (delete it with cleanup()) holding the finished build context.

    `base_status` is the base image's dpkg status file, which the Debian packages are resolved against.
    """
    scratch = tempfile.TemporaryDirectory(prefix=f"orchestrate-{image.profile}-")
    try:
        debs = debian_packages.fetch(image.debs, base_status=base_status, cache=cache_dir() / "deb")
        context = prepare_context(image, Path(scratch.name), cache=cache_dir(), debs=debs)
    except BaseException:
        scratch.cleanup()
        raise
    return scratch, context


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float
    size: int


def build_profile_images(
    client: docker.DockerClient, profiles: list[str], *, no_cache: bool = False
) -> list[BuiltImage]:
    """Fetch each profile's packages on the host, then build its image with the build's network off."""
    images = [image_for(profile) for profile in profiles]
    for image in images:
        base = base_image_of(image.recipe)
        try:
            client.api.inspect_image(base)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            raise EnvironmentProblem(f"{base}, the base of {image.tag}, is missing; build it first with "
                                     "`orchestrate images build`") from None

    built = []
    with tempfile.TemporaryDirectory(prefix="orchestrate-base-packages-") as folder:
        statuses: dict[str, Path] = {}
        for image in images:
            started = time.monotonic()
            base = base_image_of(image.recipe)
            if base not in statuses:
                statuses[base] = _base_status(client, base, Path(folder) / str(len(statuses)))
            scratch, context = with_context(image, base_status=statuses[base])
            try:
                build_recipe(client, image.recipe, network_off=True, no_cache=no_cache, context=context)
            finally:
                scratch.cleanup()
            size = int(client.api.inspect_image(image.tag)["Size"])  # type: ignore[no-untyped-call]
            built.append(BuiltImage(image.tag, time.monotonic() - started, size))
    return built


def _base_status(client: docker.DockerClient, base: str, folder: Path) -> Path:
    """Read the dpkg status file of `base`, after checking that the host's apt lists are of its release."""
    folder.mkdir()
    release, status = debian_packages.read_base_packages(client, base, folder)
    debian_packages.check_same_release(host=debian_packages.host_release(), base=release)
    return status
