"""Build the sandbox images, with or without a container registry.

The Dockerfiles start `FROM debian:bookworm-slim`. When that image is not on
the machine and no registry may be used, the base is bootstrapped offline.
mmdebstrap writes a minimal Debian root file system from the Debian package
mirror, with the packages the Dockerfile needs already inside, and
`docker import` tags it as `debian:bookworm-slim`. The Dockerfile's RUN step then
installs nothing, and the build runs with no network at all.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from .errors import EnvironmentProblem

log = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPOSITORY_ROOT / "sandbox_images"
BOOTSTRAP_SUITE = "bookworm"
BOOTSTRAP_PACKAGES = ("python3", "util-linux", "ca-certificates", "procps", "tini")
BOOTSTRAP_LABEL = "orchestrate.bootstrap"


@dataclass(frozen=True)
class ImageRecipe:
    tag: str
    context: Path
    description: str

    @property
    def dockerfile(self) -> Path:
        return self.context / "Dockerfile"


RECIPES = (
    ImageRecipe("orchestrate/base:latest", IMAGES_DIR / "base", "hardened base for every agent"),
)


def base_image_of(recipe: ImageRecipe) -> str:
    """Return the image named by the Dockerfile's first FROM line."""
    for line in recipe.dockerfile.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)", line, re.IGNORECASE)
        if match:
            return match.group(1)
    raise EnvironmentProblem(f"{recipe.dockerfile}: no FROM line; the Dockerfile is broken")


def build_all(
    client: docker.DockerClient, *, mode: str = "auto", mirror: str | None = None, no_cache: bool = False
) -> list[str]:
    """Build every recipe; `mode` is auto (bootstrap a missing base), offline or pull."""
    for recipe in RECIPES:
        if not recipe.dockerfile.is_file():
            raise EnvironmentProblem(
                f"{recipe.dockerfile} is missing; run orchestrate from a checkout of the project"
            )

    bases = sorted({base_image_of(recipe) for recipe in RECIPES})
    offline = mode == "offline"
    for base in bases:
        if _has_image(client, base) and mode != "pull":
            log.info("base image %s is present; building on it", base)
            if mirror:
                log.warning("--mirror is not used: the base image %s is already present", base)
        elif mode == "pull":
            _pull(client, base)
        else:
            offline = True
            bootstrap_base(client, base, mirror=mirror)

    built = []
    for recipe in RECIPES:
        build_recipe(client, recipe, network_off=offline, no_cache=no_cache)
        built.append(recipe.tag)
    return built


def bootstrap_base(client: docker.DockerClient, tag: str, *, mirror: str | None) -> None:
    """Create `tag` from a mmdebstrap root file system, using no container registry."""
    if shutil.which("mmdebstrap") is None:
        raise EnvironmentProblem(
            "mmdebstrap is not installed, and it is needed to make the base image without a "
            "registry; install it with `sudo apt-get install mmdebstrap`, or use --pull"
        )
    with tempfile.TemporaryDirectory(prefix="orchestrate-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        command = [
            "mmdebstrap", "--variant=minbase", "--quiet",
            f"--include={','.join(BOOTSTRAP_PACKAGES)}",
            BOOTSTRAP_SUITE, str(rootfs),
        ]
        if mirror:
            command.append(mirror)
        log.info("bootstrapping %s with mmdebstrap (about 30 s)", tag)
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
            raise EnvironmentProblem(
                f"mmdebstrap failed with exit code {completed.returncode}:\n{tail}\n"
                "check that the Debian mirror is reachable, or pass --mirror URL"
            )
        repository, _, version = tag.partition(":")
        log.info("importing the root file system as %s", tag)
        with rootfs.open("rb") as archive:
            client.api.import_image_from_data(
                archive,
                repository=repository,
                tag=version or "latest",
                changes=['CMD ["bash"]', f"LABEL {BOOTSTRAP_LABEL}=mmdebstrap-{BOOTSTRAP_SUITE}"],
            )


def build_recipe(
    client: docker.DockerClient,
    recipe: ImageRecipe,
    *,
    network_off: bool,
    no_cache: bool,
    context: Path | None = None,
) -> None:
    """Build one image from `context`, the recipe's folder unless a prepared copy of it is given."""
    folder = context or recipe.context
    log.info("building %s from %s", recipe.tag, folder)
    stream = client.api.build(
        path=str(folder),
        tag=recipe.tag,
        rm=True,
        forcerm=True,
        pull=False,
        nocache=no_cache,
        decode=True,
        network_mode="none" if network_off else None,
    )
    _follow_build(recipe, stream)


def _follow_build(recipe: ImageRecipe, stream: Iterable[dict[str, object]]) -> None:
    recent: list[str] = []
    for record in stream:
        text = str(record.get("stream") or "").rstrip()
        if text:
            recent = (recent + [text])[-10:]
            log.debug("%s", text)
        if "error" in record:
            detail = "\n".join(recent[-5:])
            raise EnvironmentProblem(f"building {recipe.tag} failed: {record['error']}\n{detail}")


def _has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        return False
    return True


def _pull(client: docker.DockerClient, reference: str) -> None:
    log.info("pulling %s", reference)
    try:
        client.images.pull(reference)
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(
            f"pulling {reference} failed: {exc.explanation or exc}; without a registry, "
            "run `orchestrate images build --offline`"
        ) from exc

