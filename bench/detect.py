"""Benchmark: how long the safety monitor takes from a conflicting write to the violation.

Runs a real two-agent run in this process: agents `alpha` and `beta` only sleep,
the shared path `c*.txt` is exclusive, and the policy for write conflicts is
`warn`, so the run goes on after each one. In trial i the benchmark writes
`c{i}.txt` into alpha's workspace from the host, exactly as alpha's container
would through its bind mount, and waits until the monitor has seen it. Then it
writes the same name into beta's workspace. The latency is the violation's
`detected_at` (time.monotonic) minus the time just before beta's write. The time
at which the run's activity listener gets the record is reported too.

The supervisor and the trial loop share one event loop, as the monitor shares
it with the rest of `orchestrate run`. At the end the run is cancelled, which
stops and removes both containers. Prints one JSON object.

Run: .venv/bin/python bench/detect.py [--trials 50] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import docker

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.stats import summarize  # noqa: E402
from orchestrator import __version__  # noqa: E402
from orchestrator.activity import Activity  # noqa: E402
from orchestrator.manifest import load_manifest  # noqa: E402
from orchestrator.plan import LABEL_RUN  # noqa: E402
from orchestrator.runner import plan_manifest  # noqa: E402
from orchestrator.runtime.docker import DockerRuntime  # noqa: E402
from orchestrator.supervisor import Supervisor  # noqa: E402

AGENTS = ("alpha", "beta")
TARGET_MEDIAN_MS = 100.0
TARGET_MAX_MS = 250.0
# A write not seen, or a conflict not reported, within this time counts as missed. The target is 0.25 s.
DETECT_TIMEOUT = 5.0
START_TIMEOUT = 120.0


def write_manifest(folder: Path, name: str) -> Path:
    source = folder / "src"
    source.mkdir()
    manifest = folder / "detect.yaml"
    manifest.write_text(
        json.dumps({
            "version": 1,
            "name": name,
            "source": str(source),
            "output": str(folder / "out"),
            "agents": [{"name": agent, "command": ["sleep", "600"]} for agent in AGENTS],
            "shared": [{"path": "c*.txt", "mode": "exclusive"}],
            "policy": {"write-conflict": "warn"},
        }),
        encoding="utf-8",
    )
    return manifest


class Recorder:
    """The run's activity listener: notes when each agent started and when each write conflict arrived."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.exited: set[str] = set()
        # Subject (the path) -> time.monotonic() at which the listener got the violation.
        self.conflicts: dict[str, float] = {}
        self._changed = anyio.Event()

    def __call__(self, activity: Activity) -> None:
        if activity.kind == "agent-started" and activity.agent is not None:
            self.started.add(activity.agent)
        elif activity.kind == "agent-exited" and activity.agent is not None:
            self.exited.add(activity.agent)
        elif activity.kind == "violation" and activity.data.get("kind") == "write-conflict":
            self.conflicts[str(activity.data["subject"])] = time.monotonic()
        else:
            return
        # The supervisor calls listeners on the event loop's thread, so setting an anyio.Event is safe.
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_started(self, agents: set[str]) -> None:
        """Wait until every agent in `agents` has started, or until one has exited."""
        while not agents <= self.started and not self.exited:
            await self._changed.wait()

    async def wait_conflict(self, path: str) -> None:
        while path not in self.conflicts:
            await self._changed.wait()


async def wait_seen(supervisor: Supervisor, agent: str, path: str) -> None:
    """Wait until the file monitor has recorded `path` in the workspace of `agent`."""
    entries = supervisor.monitor.files.states[agent].entries
    # Polled: the monitor announces a file only when it publishes it, which is too late and too rare here.
    while path not in entries:  # noqa: ASYNC110
        await anyio.sleep(0.001)


def write_file(workspace: Path, path: str) -> float:
    """Write one small file and return time.monotonic() from just before the write."""
    started = time.monotonic()
    (workspace / path).write_text("bench\n", encoding="utf-8")
    return started


async def run_trials(
    supervisor: Supervisor, recorder: Recorder, trials: int, interval: float
) -> dict[str, Any] | None:
    """Time `trials` conflicting writes, or return None when the agents do not both start."""
    workspaces = {agent.name: agent.workspace for agent in supervisor.plan.agents}
    with anyio.move_on_after(START_TIMEOUT):
        await recorder.wait_started(set(AGENTS))
    if recorder.exited or not recorder.started >= set(AGENTS):
        return None

    detected: list[float] = []
    received: list[float] = []
    missed: list[str] = []
    for index in range(trials):
        if recorder.exited:
            break  # The run is ending, and the report lists the agent under agents_exited_early.
        path = f"c{index}.txt"
        try:
            # Written from a worker thread, so the event loop sleeps in epoll when the inotify event arrives,
            # as it does when a container writes.
            await anyio.to_thread.run_sync(write_file, workspaces["alpha"], path)
            with anyio.fail_after(DETECT_TIMEOUT):
                await wait_seen(supervisor, "alpha", path)
            started = await anyio.to_thread.run_sync(write_file, workspaces["beta"], path)
            with anyio.fail_after(DETECT_TIMEOUT):
                await recorder.wait_conflict(path)
        except TimeoutError:
            missed.append(path)
            continue

        violation = next(item for item in supervisor.violations if item.subject == path and item.agent == "beta")
        detected.append(violation.detected_at - started)
        received.append(recorder.conflicts[path] - started)
        await anyio.sleep(interval)
    return {"detected": detected, "received": received, "missed": missed, "exited": sorted(recorder.exited)}


async def measure(trials: int, interval: float, folder: Path) -> dict[str, Any]:
    manifest = write_manifest(folder, f"detect-bench-{os.getpid()}")
    runtime = DockerRuntime()
    plan = plan_manifest(load_manifest(manifest), runtime, runs_root=folder / "runs")
    recorder = Recorder()
    # The final cancellation is not timed, so grace=0 kills the sleeping agents at once.
    supervisor = Supervisor(plan, runtime, dict(os.environ), grace=0, handle_signals=False, listener=recorder)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(supervisor.run)
            figures = await run_trials(supervisor, recorder, trials, interval)
            # The supervisor's cleanup is shielded: it stops and removes both containers before this returns.
            group.cancel_scope.cancel()
    finally:
        remove_leftovers(runtime.client, plan.run_id)
        runtime.close()
    # Raised outside the task group, so the message is not wrapped in an exception group.
    if figures is None:
        raise SystemExit(f"agents alpha and beta did not both start and keep running within {START_TIMEOUT:.0f} s; "
                         "run with --verbose and check `docker info`")
    return figures


def remove_leftovers(client: docker.DockerClient, run_id: str) -> None:
    """Remove any container of this run that the supervisor's cleanup left, so none outlives the benchmark."""
    for item in client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}):
        client.api.remove_container(item["Id"], force=True, v=True)


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="conflicting writes to time")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds to wait between trials")
    parser.add_argument("--verbose", action="store_true", help="show the orchestrator's log on stderr")
    options = parser.parse_args()
    if options.trials < 1:
        parser.error("--trials must be at least 1")
    logging.basicConfig(level=logging.INFO if options.verbose else logging.ERROR, format="%(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="orchestrate-detect-") as scratch:
        figures = anyio.run(measure, options.trials, options.interval, Path(scratch))

    detected, received, missed = figures["detected"], figures["received"], figures["missed"]
    summary = {key: milliseconds(value) for key, value in summarize(detected).items()} if detected else {}
    listener = {key: milliseconds(value) for key, value in summarize(received).items()} if received else {}
    client = docker.from_env()
    result = {
        "benchmark": "detect",
        "trials": options.trials,
        "interval_seconds": options.interval,
        "detected": len(detected),
        "missed": missed,
        "agents_exited_early": figures["exited"],
        "median_ms": summary.get("median"),
        "p95_ms": summary.get("p95"),
        "max_ms": summary.get("max"),
        "min_ms": summary.get("min"),
        # The listener gets the record after the audit log has written and fsync'd it, so these include that.
        "listener_median_ms": listener.get("median"),
        "listener_p95_ms": listener.get("p95"),
        "listener_max_ms": listener.get("max"),
        "targets": {"median_ms": TARGET_MEDIAN_MS, "max_ms": TARGET_MAX_MS},
        "pass": {
            "median": bool(summary) and summary["median"] < TARGET_MEDIAN_MS,
            # A missed or untried conflict counts as a latency beyond every target.
            "max": len(detected) == options.trials and summary["max"] < TARGET_MAX_MS,
        },
        "all_ms": [milliseconds(value) for value in detected],
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": client.version().get("Version"),
        "orchestrate": __version__,
    }
    client.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
