"""Run every benchmark with small settings and print one JSON object with each result and every target.

Each benchmark runs as its own subprocess, one after the other, because each one
measures the machine and two at once would slow each other down. A benchmark that
fails is reported with its error, and the others still run. The settings below
keep the whole suite to a few minutes on a 2-core machine; each script's own
defaults measure more.

Run: .venv/bin/python bench/all.py [--only launch,cli] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TIMEOUT = 900.0

# Name and arguments of each benchmark, in the order they run. `--quick` uses the second list.
SUITE: dict[str, tuple[list[str], list[str]]] = {
    "cli": (["--runs", "5"], ["--runs", "3"]),
    "launch": (["--counts", "1,10,30"], ["--counts", "1,10"]),
    "overhead": (["--seconds", "1.5", "--repeat", "2"], ["--seconds", "1", "--repeat", "1"]),
    "idle": (["--agents", "30", "--duration", "30"], ["--agents", "30", "--duration", "10"]),
    "scale": (["--agents", "50", "--sleep", "5"], ["--agents", "20", "--sleep", "3"]),
    "shutdown": (["--counts", "1,10,30"], ["--counts", "1,10"]),
    "detect": (["--trials", "50"], ["--trials", "20"]),
    "lifeline": (["--agents", "10", "--repeat", "1"], ["--agents", "5", "--repeat", "1"]),
    "publish": (["--files", "5000", "--repeat", "1"], ["--files", "2000", "--repeat", "1"]),
}


def run_one(name: str, arguments: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / f"{name}.py"), *arguments]
    started = time.monotonic()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT:.0f} s", "command": " ".join(command)}
    seconds = round(time.monotonic() - started, 1)
    try:
        result = dict(json.loads(completed.stdout))
    except json.JSONDecodeError:
        return {"error": f"exit code {completed.returncode}: {(completed.stderr or completed.stdout)[-2000:]}",
                "command": " ".join(command), "bench_seconds": seconds}
    result["command"] = " ".join(["bench/" + f"{name}.py", *arguments])
    result["bench_seconds"] = seconds
    return result


def targets_of(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the targets of one benchmark's result as records with a `pass` field.

    The newer benchmarks print a list of such records under `targets`. The older
    ones print their limits and verdicts in their own shapes, read here one by one.
    """
    if "error" in result:
        return [{"target": f"{name} ran", "measured": result["error"][:200], "pass": False}]
    found = result.get("targets")
    if isinstance(found, list):
        return found
    if name == "shutdown":
        return [{"target": f"violation stop of {item['agents']} agents", "measured": item["orchestrate_stop_seconds"],
                 "limit": result["target"]["seconds"], "unit": "s", "comparison": "under", "pass": item["pass"]}
                for item in result.get("counts", []) if "pass" in item]
    if name == "detect":
        limits = result.get("targets", {})
        return [{"target": f"write conflict detected, {key}", "measured": result.get(f"{key}_ms"),
                 "limit": limits.get(f"{key}_ms"), "unit": "ms", "comparison": "under", "pass": verdict}
                for key, verdict in result.get("pass", {}).items()]
    if name == "publish":
        limits = result.get("targets", {})
        return [
            {"target": "publish speed", "measured": result["publish_files_per_second"],
             "limit": limits["files_per_second"], "unit": "files/s", "comparison": "at least",
             "pass": result["publish_files_per_second"] >= limits["files_per_second"]},
            {"target": "publish speed / cp -r speed", "measured": result["speed_vs_cp"],
             "limit": limits["speed_vs_cp"], "unit": "ratio", "comparison": "at least",
             "pass": result["speed_vs_cp"] >= limits["speed_vs_cp"]},
        ]
    if name == "lifeline":
        return [{"target": "agents stopped after orchestrate was killed", "measured": result["max_seconds"],
                 "limit": result["target_seconds"], "unit": "s", "comparison": "at most",
                 "pass": result["max_seconds"] <= result["target_seconds"]}]
    return []


def parse_names(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in SUITE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(SUITE)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=parse_names, default=list(SUITE),
                        help=f"benchmarks to run, comma-separated (default: all of {','.join(SUITE)})")
    parser.add_argument("--quick", action="store_true", help="smaller settings still, for a check in about a minute")
    options = parser.parse_args()

    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for name in options.only:
        arguments = SUITE[name][1 if options.quick else 0]
        print(f"all: running bench/{name}.py {' '.join(arguments)}", file=sys.stderr, flush=True)
        results[name] = run_one(name, arguments)
        targets += [{"benchmark": name, **item} for item in targets_of(name, results[name])]

    machine_keys = ("cores", "kernel", "python", "docker", "docker_cli", "runc", "orchestrate")
    described = [result for result in results.values() if "kernel" in result]
    machine = {key: described[0].get(key) for key in machine_keys} if described else {}
    missed = [item["target"] for item in targets if not item.get("pass")]
    summary = {"targets_met": len(targets) - len(missed), "targets_missed": len(missed), "missed": missed}
    print(json.dumps({"benchmark": "all", "quick": options.quick, "summary": summary, "machine": machine,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "targets": targets,
                      "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
