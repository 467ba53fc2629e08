"""Benchmark: the orchestrator's CPU share and peak memory while 30 agents run idle with the monitor on.

Starts `orchestrate run` as a subprocess with N agents that sleep, waits until the
engine reports every container started, then measures for `--duration` seconds:

- the orchestrate process's CPU time (user plus system, all threads, from
  /proc/PID/stat) divided by the wall time, as a percentage of one core;
- its peak resident memory (VmHWM in /proc/PID/status, which covers the whole life
  of the process, start-up included) and its resident memory at the end;
- its context switches per second, which show how often its threads wake up;
- the same CPU share of the Docker engine (dockerd), which serves the monitor's
  inspections and event stream, when its process is visible.

The monitor runs in every run, so the figures include its file watches, the event
stream and the periodic re-inspection of every container. Then orchestrate is
stopped with SIGTERM and every container of the run is removed.

Prints one JSON object. Run: .venv/bin/python bench/idle.py [--agents 30] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.utils

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import (  # noqa: E402
    RUN_LABEL,
    ContainerEvents,
    cpu_seconds,
    machine_facts,
    memory_kib,
    orchestrate_command,
    remove_containers,
    target,
    unique_name,
    write_manifest,
)

TARGET_AGENTS = 30
TARGET_CPU_PERCENT = 3.0
TARGET_RSS_MIB = 150.0
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


def context_switches(pid: int) -> int:
    """Return the voluntary plus involuntary context switches of every thread of process `pid`."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text(encoding="ascii")
        except FileNotFoundError:
            # The thread ended between the listing and the read.
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def find_dockerd() -> int | None:
    """Return the pid of the Docker engine's process when this user can see it, else None."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text(encoding="ascii").strip() == "dockerd":
                    return int(entry.name)
            except OSError:
                continue
    return None


def sample(pid: int) -> dict[str, float]:
    return {"time": time.monotonic(), "cpu": cpu_seconds(pid), "switches": float(context_switches(pid))}


def measure(api: docker.APIClient, agents: int, duration: float) -> dict[str, Any]:
    events = ContainerEvents(api)
    dockerd = find_dockerd()
    with tempfile.TemporaryDirectory(prefix="orchestrate-idle-") as scratch, tempfile.TemporaryFile() as errors:
        folder = Path(scratch)
        name = unique_name("idle")
        manifest = write_manifest(folder, name, [{"name": f"agent-{index}", "command": ["sleep", "3600"]}
                                                 for index in range(agents)])
        started = time.monotonic()
        process = subprocess.Popen(
            orchestrate_command("-q", "run", str(manifest), "--runs-dir", str(folder / "runs"), "--no-live",
                                "--grace", "0.5"),
            stdout=subprocess.DEVNULL, stderr=errors,
        )
        try:
            events.wait_started(RUN_LABEL, f"{name}-", agents, timeout=START_TIMEOUT, process=process)
            all_running = time.monotonic() - started
            before = sample(process.pid)
            engine_before = cpu_seconds(dockerd) if dockerd else None
            time.sleep(duration)
            after = sample(process.pid)
            engine_after = cpu_seconds(dockerd) if dockerd else None
            peak_kib = memory_kib(process.pid, "VmHWM")
            resident_kib = memory_kib(process.pid, "VmRSS")
            threads = len(list(Path(f"/proc/{process.pid}/task").iterdir()))
            if process.poll() is not None:
                errors.seek(0)
                raise SystemExit(f"orchestrate exited with code {process.returncode} during the idle period: "
                                 f"{errors.read().decode(errors='replace')[-2000:]}")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            left = remove_containers(api, RUN_LABEL, f"{name}-")
            events.close()

    wall = after["time"] - before["time"]
    figures: dict[str, Any] = {
        "agents": agents,
        "seconds_to_all_running": round(all_running, 2),
        "measured_seconds": round(wall, 2),
        "cpu_percent_of_one_core": round(100 * (after["cpu"] - before["cpu"]) / wall, 2),
        "peak_rss_mib": round((peak_kib or 0) / 1024, 1),
        "rss_at_end_mib": round((resident_kib or 0) / 1024, 1),
        "threads": threads,
        "context_switches_per_second": round((after["switches"] - before["switches"]) / wall, 1),
        "dockerd_cpu_percent_of_one_core": (
            round(100 * (engine_after - engine_before) / wall, 2)
            if engine_before is not None and engine_after is not None else None
        ),
        "containers_left_after_exit": left,
    }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=TARGET_AGENTS, help="idle agents (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds to measure once every agent runs (default: %(default)s)")
    options = parser.parse_args()
    if options.agents < 1 or options.duration <= 0:
        parser.error("--agents must be at least 1 and --duration above 0")
    logging.basicConfig(level=logging.ERROR)

    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=120)
    figures = measure(api, options.agents, options.duration)
    suffix = ""
    if options.agents != TARGET_AGENTS:
        suffix = f" (target set for {TARGET_AGENTS}, measured with {options.agents})"
    result = {
        "benchmark": "idle",
        **figures,
        "targets": [
            target(f"orchestrator CPU while agents idle{suffix}", figures["cpu_percent_of_one_core"],
                   TARGET_CPU_PERCENT, unit="% of one core"),
            target(f"orchestrator peak RSS{suffix}", figures["peak_rss_mib"], TARGET_RSS_MIB, unit="MiB"),
        ],
        **machine_facts(api),
    }
    api.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
