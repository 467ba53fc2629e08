"""Benchmark: how long a violation's emergency stop takes for 1, 10 and 30 agents, against `docker kill`.

For each count it runs a real `orchestrate run` in this process with agents
that ignore SIGTERM (`sh -c "trap '' TERM; sleep 600"`). Each agent claims a
folder of its own (`agent-N/**`), because claims of two agents must not overlap.
Once every container runs, the benchmark writes `stray.txt` into the first
agent's workspace from the host, as the container would through its bind mount.
The claim violation stops the whole run (the default policy). The figure is the
run's `stop_seconds`: from the violation's detection to the last container's
exit, confirmed by inspect. The stop sends SIGTERM, waits the manifest's
`shutdown.grace`, then sends SIGKILL, so the grace period is part of the figure.
The manifest rejects a grace of 0, so a small one such as `--grace 0.01` shows
the stop with almost no grace period.

The reference starts the same number of containers with the same image and
command through the docker CLI, then times one `docker kill` of all of them
until it returns and a listing by label shows none running. Both sides run in
the same process, one after the other, so the ratio stays comparable when the
machine's speed drifts.

Prints one JSON object. Each count also carries the run's audit record of the
stop and a breakdown taken by a wrapper around the product's Docker runtime. The
breakdown shows when the SIGTERMs and SIGKILLs went out and returned. It also
counts the evidence and removal calls of agents already stopped that began while
the stop still ran.

Run: .venv/bin/python bench/shutdown.py [--counts 1,10,30] [--grace 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import docker

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import parse_counts  # noqa: E402
from orchestrator import __version__  # noqa: E402
from orchestrator.audit import RESERVED_KEYS  # noqa: E402
from orchestrator.manifest import DEFAULT_IMAGE, Shutdown, load_manifest  # noqa: E402
from orchestrator.plan import LABEL_RUN  # noqa: E402
from orchestrator.results import RunResult  # noqa: E402
from orchestrator.runner import plan_manifest  # noqa: E402
from orchestrator.runtime import ExitStatus  # noqa: E402
from orchestrator.runtime.docker import DockerRuntime  # noqa: E402
from orchestrator.supervisor import Supervisor  # noqa: E402

COMMAND = ["sh", "-c", "trap '' TERM; sleep 600"]
TARGET_SECONDS = 1.0
TARGET_AGENTS = 30
START_TIMEOUT = 180.0
RUN_END_TIMEOUT = 180.0
KILL_TIMEOUT = 60.0
# The reference containers carry this label with a value unique to this process, and cleanup removes only those.
BENCH_LABEL = "orchestrate.bench"


@dataclass
class CallLog:
    """Start and end of each stop-related engine call, on time.monotonic(), recorded from worker threads."""

    calls: list[tuple[str, float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, started: float) -> None:
        with self.lock:
            self.calls.append((name, started, time.monotonic()))


class TimedRuntime(DockerRuntime):
    """The product's Docker runtime, with the time of its signal, status, save_logs and remove calls recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.log = CallLog()

    def signal(self, container_id: str, signal: str) -> None:
        started = time.monotonic()
        try:
            super().signal(container_id, signal)
        finally:
            self.log.add(signal, started)

    def status(self, container_id: str) -> ExitStatus:
        started = time.monotonic()
        try:
            return super().status(container_id)
        finally:
            self.log.add("status", started)

    # The two calls below come only from cleanup after a container exited: an agent's evidence and removal,
    # or the run's final sweep. Counting those that overlap the stop shows whether cleanup competes with it.

    def save_logs(self, container_id: str, path: Path, *, max_bytes: int) -> int:
        started = time.monotonic()
        try:
            return super().save_logs(container_id, path, max_bytes=max_bytes)
        finally:
            self.log.add("save_logs", started)

    def remove(self, container_id: str) -> None:
        started = time.monotonic()
        try:
            super().remove(container_id)
        finally:
            self.log.add("remove", started)


# -- orchestrate -------------------------------------------------------------------------------------------


def write_manifest(folder: Path, name: str, agents: int, grace: float) -> Path:
    source = folder / "src"
    source.mkdir()
    manifest = folder / "shutdown.yaml"
    manifest.write_text(
        json.dumps({
            "version": 1,
            "name": name,
            "source": str(source),
            "output": str(folder / "out"),
            "agents": [{"name": f"agent-{index}", "command": COMMAND, "writes": [f"agent-{index}/**"]}
                       for index in range(agents)],
            "shutdown": {"grace": grace},
        }),
        encoding="utf-8",
    )
    return manifest


def running_count(client: docker.DockerClient, label: str) -> int:
    # The low-level listing: one call for all containers, and none of the high-level API's per-container inspects.
    return len(client.api.containers(filters={"label": label}))


async def wait_running(client: docker.DockerClient, label: str, count: int, ended: anyio.Event) -> bool:
    """Wait until `count` containers labelled `label` run, or return False when the run ends or time runs out."""
    with anyio.move_on_after(START_TIMEOUT):
        # Polled: the engine's listing is the only place that shows every container running.
        while not ended.is_set():  # noqa: ASYNC110
            if await anyio.to_thread.run_sync(running_count, client, label) >= count:
                return True
            await anyio.sleep(0.1)
    return False


async def run_with_violation(supervisor: Supervisor, client: docker.DockerClient) -> RunResult:
    """Start the run, wait until every agent runs, write a stray file, and return the run's result."""
    plan = supervisor.plan
    outcome: list[RunResult] = []
    ended = anyio.Event()
    problem: str | None = None

    async def run() -> None:
        outcome.append(await supervisor.run())
        ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        if not await wait_running(client, f"{LABEL_RUN}={plan.run_id}", len(plan.agents), ended):
            problem = (f"the {len(plan.agents)} agents were not all running within {START_TIMEOUT:.0f} s; "
                       "run with --verbose and check `docker info`")
        else:
            # Outside the agent's only claim (agent-0/**): a claim violation, which stops the whole run by default.
            (plan.agents[0].workspace / "stray.txt").write_text("stray\n", encoding="utf-8")
            with anyio.move_on_after(RUN_END_TIMEOUT):
                await ended.wait()
            if not ended.is_set():
                problem = f"the run did not end within {RUN_END_TIMEOUT:.0f} s of the violation"
        # Cancelling lets the supervisor's shielded cleanup stop and remove the containers.
        group.cancel_scope.cancel()

    # Raised outside the task group, so the message is not wrapped in an exception group.
    if problem is not None or not outcome:
        raise SystemExit(problem or "the run ended without a result; run with --verbose to see why")
    return outcome[0]


def breakdown(calls: list[tuple[str, float, float]], detected_at: float) -> dict[str, float | int | None]:
    """Return when the stop's SIGTERMs and SIGKILLs went out and returned, relative to the detection."""

    def relative(value: float) -> float:
        return round(value - detected_at, 3)

    figures: dict[str, float | int | None] = {}
    for name in ("SIGTERM", "SIGKILL"):
        matching = [(started, ended) for call, started, ended in calls if call == name and started >= detected_at]
        key = name.lower()
        figures[f"{key}_calls"] = len(matching)
        figures[f"first_{key}_sent"] = relative(min(started for started, _ in matching)) if matching else None
        figures[f"last_{key}_sent"] = relative(max(started for started, _ in matching)) if matching else None
        figures[f"last_{key}_returned"] = relative(max(ended for _, ended in matching)) if matching else None
        # Measured here, a SIGKILL call returns only once the container has exited, so it is the slow one.
        figures[f"median_{key}_call"] = (
            round(statistics.median(ended - started for started, ended in matching), 3) if matching else None
        )

    # Evidence and removal calls of agents already stopped that began while the stop still ran.
    kills = [ended for call, started, ended in calls if call == "SIGKILL" and started >= detected_at]
    if kills:
        last_kill = max(kills)
        figures["cleanup_calls_before_last_sigkill_returned"] = sum(
            call in ("save_logs", "remove") and detected_at <= started < last_kill for call, started, _ in calls
        )
    return figures


def time_orchestrate(client: docker.DockerClient, agents: int, grace: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orchestrate-shutdown-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder, f"shutdown-bench-{os.getpid()}", agents, grace)
        runtime = TimedRuntime()
        plan = plan_manifest(load_manifest(manifest), runtime, runs_root=folder / "runs")
        supervisor = Supervisor(plan, runtime, dict(os.environ), grace=grace, handle_signals=False)
        try:
            result = anyio.run(run_with_violation, supervisor, client)
        finally:
            remove_labelled(client, f"{LABEL_RUN}={plan.run_id}")
            runtime.close()

        if result.stop_seconds is None or supervisor.stopped_by is None:
            raise SystemExit(f"the stray file did not stop the run ({result.headline()}); "
                             "run with --verbose to see the monitor's log")
        audit = [json.loads(line) for line in (plan.run_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
        shutdown = next(record for record in audit if record["kind"] == "shutdown")
        return {
            "stop_seconds": result.stop_seconds,
            # Every field but the log's own bookkeeping, so a renamed field shows up rather than breaking this.
            "audit": {key: value for key, value in shutdown.items() if key not in RESERVED_KEYS},
            "breakdown": breakdown(runtime.log.calls, supervisor.stopped_by.detected_at),
        }


# -- docker kill -------------------------------------------------------------------------------------------


def docker_cli(*arguments: str) -> str:
    completed = subprocess.run(["docker", *arguments], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"`docker {' '.join(arguments[:3])} ...` failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def time_docker_kill(client: docker.DockerClient, count: int, label: str) -> float:
    """Start `count` containers through the CLI, then time one `docker kill` of all of them."""
    start = ["run", "-d", "--network", "none", "--cap-drop", "ALL", "--read-only", "--user", "1000:1000",
             "--label", label, DEFAULT_IMAGE, *COMMAND]
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            ids = list(pool.map(lambda _index: docker_cli(*start), range(count)))
        if running_count(client, label) != count:
            raise SystemExit(f"only {running_count(client, label)} of {count} reference containers are running")

        started = time.monotonic()
        docker_cli("kill", *ids)
        while running_count(client, label) > 0:
            if time.monotonic() - started > KILL_TIMEOUT:
                raise SystemExit(f"reference containers labelled {label} still ran {KILL_TIMEOUT:.0f} s after "
                                 "`docker kill`; check `docker ps`")
            time.sleep(0.005)
        return time.monotonic() - started
    finally:
        remove_labelled(client, label)


def remove_labelled(client: docker.DockerClient, label: str) -> None:
    for item in client.api.containers(all=True, filters={"label": label}):
        client.api.remove_container(item["Id"], force=True, v=True)


# -- report ------------------------------------------------------------------------------------------------


def measure_count(client: docker.DockerClient, count: int, grace: float, repeat: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    kills: list[float] = []
    for attempt in range(repeat):
        label = f"{BENCH_LABEL}=shutdown-{os.getpid()}-{count}-{attempt}"
        # Alternate the order, so neither side always follows the other's container removals.
        if attempt % 2 == 0:
            runs.append(time_orchestrate(client, count, grace))
            kills.append(time_docker_kill(client, count, label))
        else:
            kills.append(time_docker_kill(client, count, label))
            runs.append(time_orchestrate(client, count, grace))

    stops = [run["stop_seconds"] for run in runs]
    stop, kill = statistics.median(stops), statistics.median(kills)
    figures: dict[str, Any] = {
        "agents": count,
        "orchestrate_stop_seconds": round(stop, 3),
        "docker_kill_seconds": round(kill, 3),
        "ratio_to_docker_kill": round(stop / kill, 2),
    }
    if count == TARGET_AGENTS:
        figures["target_seconds"] = TARGET_SECONDS
        figures["pass"] = stop < TARGET_SECONDS
    figures["all_orchestrate_stop_seconds"] = [round(value, 3) for value in stops]
    figures["all_docker_kill_seconds"] = [round(value, 3) for value in kills]
    figures["audit"] = [run["audit"] for run in runs]
    figures["breakdown"] = [run["breakdown"] for run in runs]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=parse_counts, default=[1, 10, 30], help="agent counts, comma-separated")
    parser.add_argument("--grace", type=float, default=Shutdown().grace,
                        help="the manifest's shutdown.grace: seconds from SIGTERM to SIGKILL (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side per count; the median counts")
    parser.add_argument("--verbose", action="store_true", help="show the orchestrator's log on stderr")
    options = parser.parse_args()
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    if options.grace <= 0:
        parser.error("--grace must be above 0, because the manifest's shutdown.grace rejects 0; try 0.01")
    logging.basicConfig(level=logging.INFO if options.verbose else logging.ERROR, format="%(name)s: %(message)s")

    client = docker.from_env(timeout=120)
    per_count = [measure_count(client, count, options.grace, options.repeat) for count in options.counts]
    result = {
        "benchmark": "shutdown",
        "grace_seconds": options.grace,
        "repeat": options.repeat,
        "counts": per_count,
        "target": {"agents": TARGET_AGENTS, "seconds": TARGET_SECONDS},
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "docker": client.version().get("Version"),
        "docker_cli": docker_cli("version", "--format", "{{.Client.Version}}"),
        "runc": runc_version(client),
        "orchestrate": __version__,
    }
    client.close()
    print(json.dumps(result, indent=2))
    return 0


def runc_version(client: docker.DockerClient) -> str | None:
    for component in client.version().get("Components") or []:
        if component.get("Name") == "runc":
            return str(component.get("Version"))
    return None


if __name__ == "__main__":
    sys.exit(main())
