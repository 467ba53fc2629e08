"""Benchmark: how long `orchestrate run` takes to get 1, 10 and 30 agents running, against plain Docker.

For each count, three launch paths start the same hardened containers, each running
`sleep 600` under orchestrate's lifeline wrapper:

- orchestrate: `orchestrate run` as a subprocess, so its start-up and imports count;
- the docker CLI: one `docker run -d` per container, all in parallel, with the flags
  that match the spec `orchestrate plan --json` prints for the same manifest;
- the SDK: the low-level `create_container` and `start` per container, one thread
  each, from this process with a client already connected (the engine's own limit).

Every path is timed the same way: from just before the first process or call
starts to the engine's `start` event of the last container (and of the first one),
read from the engine's event stream, so polling costs nothing and skews no side.
The engine's `create` events give a breakdown of where the time went. The order of
the three paths alternates between repeats. Every container is removed after each
measurement, and orchestrate is stopped with SIGTERM.

Prints one JSON object. Run: .venv/bin/python bench/launch.py [--counts 1,10,30] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.utils

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import (  # noqa: E402
    BENCH_LABEL,
    RUN_LABEL,
    ContainerEvents,
    cli_run_arguments,
    docker_cli,
    machine_facts,
    orchestrate_command,
    parse_counts,
    plan_containers,
    remove_containers,
    sdk_create_arguments,
    target,
    unique_name,
    write_manifest,
)

COMMAND = ["sleep", "600"]
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
TARGET_AGENTS = 30
TARGET_RATIO_CLI = 0.85
TARGET_RATIO_SDK = 1.1
TARGET_FIRST_SECONDS = 0.5


def timings(started_ns: int, creates: dict[str, int], starts: dict[str, int]) -> dict[str, float]:
    """Return the seconds from `started_ns` to the first and last create and start events."""

    def since(stamp: int) -> float:
        return round((stamp - started_ns) / 1e9, 3)

    return {
        "first_create": since(min(creates.values())) if creates else float("nan"),
        "last_create": since(max(creates.values())) if creates else float("nan"),
        "first_running": since(min(starts.values())),
        "all_running": since(max(starts.values())),
    }


def prepare_mount_sources(specs: list[dict[str, Any]], folder: Path) -> None:
    """Create what only a run would create inside `folder`: the bind mount sources and the mask points in them.

    A tmpfs that masks a folder of a read-only bind mount (such as the publisher's folder in the output
    tree) needs that folder to exist, because the engine cannot create it on a read-only mount.
    """
    for spec in specs:
        binds = {mount["target"]: Path(mount["source"]) for mount in spec["mounts"] if mount["type"] == "bind"}
        for mount in spec["mounts"]:
            if mount["type"] == "bind" and Path(mount["source"]).is_relative_to(folder):
                Path(mount["source"]).mkdir(parents=True, exist_ok=True)
        for mount in spec["mounts"]:
            if mount["type"] != "tmpfs":
                continue
            for bind_target, source in binds.items():
                inside = Path(mount["target"])
                if inside.is_relative_to(bind_target) and inside != Path(bind_target) and source.is_relative_to(folder):
                    (source / inside.relative_to(bind_target)).mkdir(parents=True, exist_ok=True)


# -- the three launch paths ---------------------------------------------------------------------------------


def launch_orchestrate(events: ContainerEvents, api: docker.APIClient, manifest: Path, name: str,
                       count: int) -> dict[str, Any]:
    runs = manifest.parent / "runs"
    with tempfile.TemporaryFile() as errors:
        started = time.time_ns()
        process = subprocess.Popen(
            orchestrate_command("-q", "run", str(manifest), "--runs-dir", str(runs), "--no-live", "--grace", "0.5"),
            stdout=subprocess.DEVNULL, stderr=errors,
        )
        try:
            starts = events.wait_started(RUN_LABEL, f"{name}-", count, timeout=START_TIMEOUT, process=process)
        except SystemExit as exc:
            errors.seek(0)
            raise SystemExit(f"{exc}; orchestrate's output: {errors.read().decode(errors='replace')[-2000:]}") from None
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
            left = remove_containers(api, RUN_LABEL, f"{name}-")

    figures: dict[str, Any] = timings(started, events.matching("create", RUN_LABEL, f"{name}-"), starts)
    figures["exit_code_after_sigterm"] = exit_code
    figures["containers_left_after_exit"] = left
    return figures


def launch_cli(events: ContainerEvents, api: docker.APIClient, specs: list[dict[str, Any]],
               label: str) -> dict[str, Any]:
    key, value = label.split("=", 1)
    commands = [cli_run_arguments(spec, label) for spec in specs]
    returned: list[int] = []
    try:
        started = time.time_ns()
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            for _ in pool.map(lambda arguments: docker_cli(*arguments), commands):
                returned.append(time.time_ns())
        starts = events.wait_started(key, value, len(specs), timeout=START_TIMEOUT)
    finally:
        remove_containers(api, key, value)

    figures: dict[str, Any] = timings(started, events.matching("create", key, value), starts)
    figures["last_command_returned"] = round((max(returned) - started) / 1e9, 3)
    return figures


def launch_sdk(events: ContainerEvents, api: docker.APIClient, specs: list[dict[str, Any]], label: str,
               threads: int) -> dict[str, Any]:
    key, value = label.split("=", 1)
    # The host configs are built before the clock starts: orchestrate builds its specs before launching too.
    arguments = [sdk_create_arguments(api, spec, label) for spec in specs]

    def create_and_start(keywords: dict[str, Any]) -> None:
        response = api.create_container(**keywords)
        api.start(response["Id"])

    try:
        started = time.time_ns()
        with ThreadPoolExecutor(max_workers=min(threads, len(specs))) as pool:
            list(pool.map(create_and_start, arguments))
        starts = events.wait_started(key, value, len(specs), timeout=START_TIMEOUT)
    finally:
        remove_containers(api, key, value)

    return dict(timings(started, events.matching("create", key, value), starts))


# -- report ------------------------------------------------------------------------------------------------


def measure_count(events: ContainerEvents, api: docker.APIClient, count: int, *, repeat: int,
                  threads: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"orchestrate": [], "docker_cli": [], "sdk": []}
    for attempt in range(repeat):
        with tempfile.TemporaryDirectory(prefix="orchestrate-launch-") as scratch:
            folder = Path(scratch)
            name = unique_name("launch")
            agents = [{"name": f"agent-{index}", "command": COMMAND} for index in range(count)]
            manifest = write_manifest(folder, name, agents)
            specs = plan_containers(manifest, folder / "runs")
            prepare_mount_sources(specs, folder)
            label = f"{BENCH_LABEL}=launch-{os.getpid()}-{count}-{attempt}"

            paths: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("orchestrate", partial(launch_orchestrate, events, api, manifest, name, count)),
                ("docker_cli", partial(launch_cli, events, api, specs, f"{label}-cli")),
                ("sdk", partial(launch_sdk, events, api, specs, f"{label}-sdk", threads)),
            ]
            # Alternate the order, so no path always runs right after another's container removals.
            for key, launch in paths if attempt % 2 == 0 else reversed(paths):
                samples[key].append(launch())

    def median_of(key: str, figure: str) -> float:
        return round(float(statistics.median(sample[figure] for sample in samples[key])), 3)

    orchestrate, cli, sdk = (median_of(key, "all_running") for key in ("orchestrate", "docker_cli", "sdk"))
    return {
        "agents": count,
        "all_running_seconds": {"orchestrate": orchestrate, "docker_cli": cli, "sdk": sdk},
        "first_running_seconds": {key: median_of(key, "first_running") for key in samples},
        "ratio_to_docker_cli": round(orchestrate / cli, 2),
        "ratio_to_sdk": round(orchestrate / sdk, 2),
        "samples": samples,
    }


def targets_of(per_count: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for figures in per_count:
        first = figures["first_running_seconds"]["orchestrate"]
        found.append(target(f"first agent running, {figures['agents']} agents", first, TARGET_FIRST_SECONDS,
                            unit="s"))
        if figures["agents"] == TARGET_AGENTS:
            found.append(target(f"{TARGET_AGENTS} agents running / docker CLI", figures["ratio_to_docker_cli"],
                                TARGET_RATIO_CLI, unit="ratio"))
            found.append(target(f"{TARGET_AGENTS} agents running / SDK thread pool", figures["ratio_to_sdk"],
                                TARGET_RATIO_SDK, unit="ratio"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=parse_counts, default=[1, 10, TARGET_AGENTS],
                        help="agent counts, comma-separated (default: 1,10,30)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each path per count; the median counts")
    parser.add_argument("--threads", type=int, default=64,
                        help="threads of the SDK baseline, capped at the agent count (default: %(default)s)")
    options = parser.parse_args()
    if options.repeat < 1 or options.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    logging.basicConfig(level=logging.ERROR)

    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=120,
                           max_pool_size=max(options.counts) + 4)
    events = ContainerEvents(api)
    try:
        per_count = [measure_count(events, api, count, repeat=options.repeat, threads=options.threads)
                     for count in options.counts]
    finally:
        events.close()
    result = {
        "benchmark": "launch",
        "repeat": options.repeat,
        "counts": per_count,
        "targets": targets_of(per_count),
        **machine_facts(api),
    }
    api.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
