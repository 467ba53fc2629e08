"""Benchmark: how fast agents stop after `orchestrate run` dies by SIGKILL (the dead-man's switch).

Starts a run of N agents that sleep (half of them ignore SIGTERM), waits until all run, kills the
orchestrate process with SIGKILL, then polls the engine until every agent container has exited.
Prints one JSON object; removes the run's containers afterwards with `orchestrate cleanup RUN`.

Run: .venv/bin/python bench/lifeline.py [--agents 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from orchestrator import __version__  # noqa: E402

ORCHESTRATE = [sys.executable, "-m", "orchestrator"]


def write_manifest(folder: Path, name: str, agents: int) -> Path:
    source = folder / "src"
    source.mkdir()
    entries = []
    for index in range(agents):
        command = ["sleep", "600"] if index % 2 == 0 else ["sh", "-c", "trap '' TERM INT; sleep 600"]
        entries.append({"name": f"agent-{index}", "command": command})
    manifest = folder / "bench.yaml"
    manifest.write_text(
        json.dumps({"version": 1, "name": name, "source": str(source), "output": str(folder / "out"),
                    "agents": entries}),
        encoding="utf-8",
    )
    return manifest


def run_containers(client: docker.DockerClient, prefix: str) -> list[dict[str, object]]:
    """Return the low-level listing of this run's containers (no per-container inspect to race with)."""
    listed = client.api.containers(all=True, filters={"label": "orchestrate.run"})
    return [
        item for item in listed
        if str((item.get("Labels") or {}).get("orchestrate.run", "")).startswith(prefix + "-")
    ]


def one_trial(client: docker.DockerClient, agents: int, trial: int) -> float:
    with tempfile.TemporaryDirectory(prefix="orchestrate-lifeline-") as scratch:
        folder = Path(scratch)
        name = f"lifeline-bench-{os.getpid()}-{trial}"
        manifest = write_manifest(folder, name, agents)
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        process = subprocess.Popen(
            [*ORCHESTRATE, "-q", "run", str(manifest), "--runs-dir", str(folder / "runs")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
        )
        try:
            deadline = time.monotonic() + 120
            while sum(item.get("State") == "running" for item in run_containers(client, name)) < agents:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{agents} agents did not start within 120 s")
                time.sleep(0.05)

            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = time.monotonic()
            while any(item.get("State") == "running" for item in run_containers(client, name)):
                if time.monotonic() - killed > 60:
                    raise SystemExit("agents still ran 60 s after orchestrate was killed")
                time.sleep(0.02)
            return time.monotonic() - killed
        finally:
            if process.poll() is None:
                process.kill()
            for item in run_containers(client, name):
                run_id = str((item.get("Labels") or {})["orchestrate.run"])
                subprocess.run([*ORCHESTRATE, "cleanup", run_id, "--runs-dir", str(folder / "runs")],
                               capture_output=True, env=environment, check=False)
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="agents per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs to kill")
    options = parser.parse_args()

    client = docker.from_env()
    seconds = [one_trial(client, options.agents, trial) for trial in range(options.repeat)]
    result = {
        "benchmark": "lifeline",
        "agents": options.agents,
        "seconds_to_all_stopped": [round(value, 3) for value in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        "max_seconds": round(max(seconds), 3),
        "target_seconds": 10,
        "cores": os.cpu_count(),
        "docker": client.version().get("Version"),
        "orchestrate": __version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
