"""Benchmark: how long each profile image takes to fetch and build, and how large it is.

For each profile, in turn, it empties part of the package cache, then builds the profile's image the
way `orchestrate images build --profile NAME` does, with every layer of that image built again
(the base image is used as it is). `--empty deb` empties only the Debian package cache, so the time
covers resolving and fetching git and the whole build, with the npm and PyPI packages already cached;
`--empty all` empties the whole package cache first. Downloads go to the package registries and the
Debian mirror. Prints one JSON object.

Run: .venv/bin/python bench/profile_images.py [--profiles claude-code,codex] [--empty deb|all]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import docker

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from orchestrator import __version__  # noqa: E402
from orchestrator.profile_images import build_profile_images, cache_dir, profile_images  # noqa: E402


def measure(client: docker.DockerClient, profile: str, *, empty: str) -> dict[str, Any]:
    shutil.rmtree(cache_dir() if empty == "all" else cache_dir() / "deb", ignore_errors=True)

    started = time.monotonic()
    [built] = build_profile_images(client, [profile], no_cache=True)
    seconds = time.monotonic() - started

    return {"tag": built.tag, "seconds": round(seconds, 1), "size_mb": round(built.size / 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=",".join(sorted(profile_images())),
                        help="comma-separated profiles to build, in order")
    parser.add_argument("--empty", choices=("deb", "all"), default="deb",
                        help="the part of the package cache emptied before each build")
    options = parser.parse_args()

    client = docker.from_env(timeout=600)
    results = {profile: measure(client, profile, empty=options.empty) for profile in options.profiles.split(",")}
    print(json.dumps({
        "benchmark": "profile_images", "version": __version__, "machine": platform.machine(),
        "empty": options.empty, "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
