"""Build the test image with the stand-in agent CLI, tagged by a hash of its files so a build is reused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker
import docker.errors

STANDIN_DIR = Path(__file__).resolve().parents[1] / "images" / "standin"
STANDIN_REPOSITORY = "orchestrate-test/standin"


def standin_tag() -> str:
    """Return the image tag for the current stand-in files: a change to any of them makes a new tag."""
    digest = hashlib.sha256()
    for path in sorted(STANDIN_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{STANDIN_REPOSITORY}:{digest.hexdigest()[:16]}"


def ensure_standin_image(client: docker.DockerClient) -> str:
    """Return the stand-in image's tag, building it (with no network, in about a second) when it is missing."""
    tag = standin_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    errors = []
    for record in client.api.build(path=str(STANDIN_DIR), tag=tag, rm=True, forcerm=True, pull=False,
                                   decode=True, network_mode="none"):
        if "error" in record:
            errors.append(str(record["error"]))
    if errors:
        raise RuntimeError(f"building {tag} failed: {'; '.join(errors)}")
    return tag
