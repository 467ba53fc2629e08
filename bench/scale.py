"""Benchmark: 50 agents start, are monitored and stop cleanly in one `orchestrate run`.

Each agent writes one file into its workspace, sleeps a few seconds and exits 0.
The run is `orchestrate run --json` as a subprocess, and the benchmark reads its
event lines as they come. An agent counts as monitored when the file monitor saw
its file and the publisher published it while the agent still ran (a `published`
event before its `agent-exited` event), which needs the workspace watch of that
agent to work. The engine's event stream gives when every container started.

Reports the times to every agent running and to the end of the run, the number of
agents that succeeded and were monitored, the run's exit code, the orchestrator's
peak resident memory (VmHWM, sampled every 0.1 s until it exits) and the containers
of the run still present after it ended, which must be none.

Prints one JSON object. Run: .venv/bin/python bench/scale.py [--agents 50] [--sleep 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import docker
import docker.utils

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import (  # noqa: E402
    RUN_LABEL,
    ContainerEvents,
    PeakMemory,
    containers_with_label,
    machine_facts,
    orchestrate_command,
    remove_containers,
    unique_name,
    write_manifest,
)

TARGET_AGENTS = 50
RUN_TIMEOUT = 600.0


def agent_entries(agents: int, sleep: float) -> list[dict[str, Any]]:
    # Each agent claims only its own file, so a stray write would be a violation rather than pass unseen.
    return [
        {"name": f"agent-{index}", "writes": [f"agent-{index}.txt"],
         "command": ["sh", "-c", f'echo done > "$ORCHESTRATE_AGENT.txt"; sleep {sleep}; exit 0']}
        for index in range(agents)
    ]


def read_lines(stream: IO[str], lines: list[dict[str, Any]]) -> None:
    """Collect the JSON lines of `run --json` with the time each arrived, until the stream ends."""
    for line in stream:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        record["received"] = time.time()
        lines.append(record)


def monitored_agents(lines: list[dict[str, Any]]) -> set[str]:
    """Return the agents whose file was published before they exited."""
    exited: set[str] = set()
    seen: set[str] = set()
    for record in lines:
        agent = str(record.get("agent"))
        if record.get("kind") == "agent-exited":
            exited.add(agent)
        elif record.get("kind") == "published" and agent not in exited:
            seen.add(agent)
    return seen


def measure(api: docker.APIClient, agents: int, sleep: float) -> dict[str, Any]:
    events = ContainerEvents(api)
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="orchestrate-scale-") as scratch, tempfile.TemporaryFile() as errors:
        folder = Path(scratch)
        name = unique_name("scale")
        manifest = write_manifest(folder, name, agent_entries(agents, sleep))
        started_ns = time.time_ns()
        process = subprocess.Popen(
            orchestrate_command("run", str(manifest), "--runs-dir", str(folder / "runs"), "--no-live", "--json"),
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )
        peak = PeakMemory(process.pid)
        assert process.stdout is not None
        reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            exit_code = process.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            exit_code = process.wait()
        ended_ns = time.time_ns()
        reader.join(10)
        peak_kib = peak.stop()
        left = containers_with_label(api, RUN_LABEL, f"{name}-")
        remove_containers(api, RUN_LABEL, f"{name}-")
        starts = events.matching("start", RUN_LABEL, f"{name}-")
        events.close()
        errors.seek(0)
        error_text = errors.read().decode(errors="replace")

    result = next((record for record in lines if record.get("kind") == "result"), None)
    states = [agent.get("state") for agent in (result or {}).get("agents", [])]
    problems = [line for line in error_text.splitlines() if "error" in line.lower() or "warning" in line.lower()]
    return {
        "agents": agents,
        "agent_sleep_seconds": sleep,
        "exit_code": exit_code,
        "containers_started": len(starts),
        "seconds_to_all_running": round((max(starts.values()) - started_ns) / 1e9, 2) if starts else None,
        "seconds_to_first_running": round((min(starts.values()) - started_ns) / 1e9, 2) if starts else None,
        "run_seconds": round((ended_ns - started_ns) / 1e9, 2),
        "run_seconds_reported": (result or {}).get("seconds"),
        "agents_succeeded": states.count("succeeded"),
        "agents_monitored": len(monitored_agents(lines)),
        "violations": (result or {}).get("violations"),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "containers_left_after_exit": len(left),
        "error_and_warning_lines": problems[:20],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=TARGET_AGENTS, help="agents in the run (default: %(default)s)")
    parser.add_argument("--sleep", type=float, default=5.0,
                        help="seconds each agent sleeps after writing its file (default: %(default)s)")
    options = parser.parse_args()
    if options.agents < 1 or options.sleep < 0:
        parser.error("--agents must be at least 1 and --sleep at least 0")
    logging.basicConfig(level=logging.ERROR)

    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=120)
    figures = measure(api, options.agents, options.sleep)
    count = options.agents
    clean = (
        figures["exit_code"] == 0
        and figures["containers_started"] == count
        and figures["agents_succeeded"] == count
        and figures["agents_monitored"] == count
        and figures["containers_left_after_exit"] == 0
        and not figures["error_and_warning_lines"]
    )
    result = {
        "benchmark": "scale",
        **figures,
        "targets": [{
            "target": f"{TARGET_AGENTS} agents start, are monitored and stop with no error"
                      + ("" if count == TARGET_AGENTS else f" (measured with {count})"),
            "measured": f"{figures['agents_succeeded']} succeeded, {figures['agents_monitored']} monitored, "
                        f"exit code {figures['exit_code']}, {figures['containers_left_after_exit']} containers left",
            "pass": clean,
        }],
        **machine_facts(api),
    }
    api.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
