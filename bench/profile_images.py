"""Benchmark: how long each profile image takes to fetch and build, and how large it is.

For each profile, in turn, it empties part of the package cache, then builds the profile's image the
way `orchestrate images build --profile NAME` does, with every layer of that image built again
(the base image is used as it is). `--empty deb` empties only the Debian package cache. The time then
covers resolving and fetching git and the whole build, with the npm and PyPI packages already cached.
`--empty all` empties the whole package cache first. Downloads go to the package registries and the
Debian mirror. `--git-only` instead times the git part alone, from an empty Debian package cache: reading
the base image's package list, resolving and fetching, then building the git stage of the claude-code
Dockerfile with no layer cached. Prints one JSON object.

Run: .venv/bin/python bench/profile_images.py [--profiles claude-code,codex] [--empty deb|all] [--git-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from orchestrator import __version__, debian_packages  # noqa: E402
from orchestrator.images import base_image_of  # noqa: E402
from orchestrator.profile_images import (  # noqa: E402
    AGENT_DEBS,
    add_debs,
    build_profile_images,
    cache_dir,
    image_for,
    profile_images,
)

# The last line of the git stage in every profile Dockerfile.
LAST_STAGE_LINE = "COPY --from=debs /staging/ /"


def measure(client: docker.DockerClient, profile: str, *, empty: str) -> dict[str, Any]:
    shutil.rmtree(cache_dir() if empty == "all" else cache_dir() / "deb", ignore_errors=True)

    started = time.monotonic()
    [built] = build_profile_images(client, [profile], no_cache=True)
    seconds = time.monotonic() - started

    return {"tag": built.tag, "seconds": round(seconds, 1), "size_mb": round(built.size / 1e6)}


def measure_git(client: docker.DockerClient) -> dict[str, Any]:
    shutil.rmtree(cache_dir() / "deb", ignore_errors=True)
    recipe = image_for("claude-code").recipe
    head, line, _rest = recipe.dockerfile.read_text(encoding="utf-8").partition(LAST_STAGE_LINE)

    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        _release, status = debian_packages.read_base_packages(client, base_image_of(recipe), Path(scratch))
        debs = debian_packages.fetch(AGENT_DEBS, base_status=status, cache=cache_dir() / "deb")
        fetched = time.monotonic()

        context = Path(scratch) / "context"
        (context / "packages").mkdir(parents=True)
        add_debs(debs, context / "packages" / "debs")
        (context / "Dockerfile").write_text(head + line + "\n", encoding="utf-8")
        built = time.monotonic()
        image, _logs = client.images.build(path=str(context), nocache=True, rm=True, forcerm=True,
                                           network_mode="none")
        stage_seconds = time.monotonic() - built
        added = client.api.history(image.id)[0]["Size"]
        client.images.remove(image.id)

    return {"packages": len(debs), "download_mb": round(sum(deb.stat().st_size for deb in debs) / 1e6, 1),
            "fetch_seconds": round(fetched - started, 1), "stage_seconds": round(stage_seconds, 1),
            "layer_mb": round(added / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=",".join(sorted(profile_images())),
                        help="comma-separated profiles to build, in order")
    parser.add_argument("--empty", choices=("deb", "all"), default="deb",
                        help="the part of the package cache emptied before each build")
    parser.add_argument("--git-only", action="store_true", help="time only fetching git and its build stage")
    options = parser.parse_args()

    client = docker.from_env(timeout=600)
    document: dict[str, Any] = {"benchmark": "profile_images", "version": __version__, "machine": platform.machine()}
    if options.git_only:
        document["git"] = measure_git(client)
    else:
        document["empty"] = options.empty
        document["results"] = {profile: measure(client, profile, empty=options.empty)
                               for profile in options.profiles.split(",")}
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
