"""Benchmark: how long `orchestrate shell` takes to show its prompt, and to return after `exit`.

Drives the real command through a pseudo-terminal (pexpect) in a scratch folder with an empty source.
The first time includes orchestrate's start-up, the plan, the container's create and start, and the
terminal exec. The second includes the stop, evidence, publishing and removal. Prints one JSON object.

Run: .venv/bin/python bench/shell.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pexpect

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import machine_facts, orchestrate_command  # noqa: E402
from orchestrator import __version__  # noqa: E402

PROMPT = r"\$ "


def one_trial(folder: Path) -> tuple[float, float]:
    """Return the seconds to the first prompt and from `exit` to the command's end."""
    command = orchestrate_command("shell", "--source", "src", "--runs-dir", "runs")
    started = time.monotonic()
    child = pexpect.spawn(command[0], command[1:], cwd=str(folder), timeout=120, encoding="utf-8")
    child.expect(PROMPT)
    to_prompt = time.monotonic() - started

    leaving = time.monotonic()
    child.sendline("exit")
    child.expect(pexpect.EOF)
    to_end = time.monotonic() - leaving
    child.close()
    if child.exitstatus != 0:
        raise RuntimeError(f"orchestrate shell exited {child.exitstatus}: {child.before}")
    return to_prompt, to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="Number of shells to time (default 5).")
    options = parser.parse_args()

    import docker

    client = docker.from_env()
    prompts, ends = [], []
    with tempfile.TemporaryDirectory(prefix="orchestrate-shell-") as scratch:
        folder = Path(scratch)
        (folder / "src").mkdir()
        for _ in range(options.repeat):
            to_prompt, to_end = one_trial(folder)
            prompts.append(to_prompt)
            ends.append(to_end)
    print(json.dumps({
        "benchmark": "shell",
        "orchestrate": __version__,
        "repeat": options.repeat,
        "prompt_seconds_median": round(statistics.median(prompts), 3),
        "exit_seconds_median": round(statistics.median(ends), 3),
        "prompt_seconds": [round(value, 3) for value in prompts],
        "exit_seconds": [round(value, 3) for value in ends],
        "machine": machine_facts(client.api),
    }, indent=2))


if __name__ == "__main__":
    main()
