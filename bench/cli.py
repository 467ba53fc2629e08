"""Benchmark: wall time of `orchestrate --help` and `orchestrate plan` on the example manifest.

Each command runs `--runs` times as a subprocess of the installed console script;
the median counts. For scale, the same is measured for a bare `python -c pass` of
the same interpreter, the floor that no Python command can beat. The import
profiles of both commands (`python -X importtime -m orchestrator --help`) list
the top-level modules that cost the most, including everything they import, which
is where a slow command spends its start-up.

Prints one JSON object. Run: .venv/bin/python bench/cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import docker.utils

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import machine_facts, orchestrate_command, target  # noqa: E402

EXAMPLE = "configs/agents.example.yaml"
TARGET_HELP_SECONDS = 0.3
PROFILE_ENTRIES = 12


def wall_times(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if completed.returncode != 0:
            raise SystemExit(f"`{' '.join(command)}` failed with exit code {completed.returncode}: "
                             f"{completed.stderr.decode(errors='replace')[-1500:]}")
    return times


def import_profile(text: str, entries: int = PROFILE_ENTRIES) -> list[dict[str, Any]]:
    """Return the top-level imports of a `-X importtime` report, costliest first, in milliseconds.

    Each report line reads `import time: SELF | CUMULATIVE | NAME`, in microseconds, with NAME indented
    by two spaces per level of nesting, so an unindented name is imported by the program itself.
    """
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].rstrip()
        if name.startswith(" ") and not name.startswith("  "):
            found.append({"module": name.strip(), "cumulative_ms": round(int(parts[1]) / 1000, 1),
                          "self_ms": round(int(parts[0]) / 1000, 1)})
    return sorted(found, key=lambda item: item["cumulative_ms"], reverse=True)[:entries]


def summary(times: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3), "max": round(max(times), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command; the median counts (default: 5)")
    options = parser.parse_args()
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.ERROR)

    commands = {
        "python_startup": [sys.executable, "-c", "pass"],
        "help": orchestrate_command("--help"),
        "plan": orchestrate_command("plan", EXAMPLE),
    }
    figures = {key: summary(wall_times(command, options.runs)) for key, command in commands.items()}
    profiles = {
        f"{key}_import_profile": import_profile(subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "orchestrator", *arguments], cwd=REPOSITORY,
            capture_output=True, text=True, check=False,
        ).stderr)
        for key, arguments in (("help", ["--help"]), ("plan", ["plan", EXAMPLE]))
    }

    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=60)
    result = {
        "benchmark": "cli",
        "runs": options.runs,
        "seconds": figures,
        "commands": {key: " ".join(command) for key, command in commands.items()},
        **profiles,
        "targets": [target("orchestrate --help wall time", figures["help"]["median"], TARGET_HELP_SECONDS,
                           unit="s")],
        **machine_facts(api),
    }
    api.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
