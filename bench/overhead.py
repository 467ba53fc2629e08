"""Benchmark: how fast a CPU-bound and a file-bound workload run inside the sandbox, against the host.

The same workload script runs on the host (with the host's python3) and as the one
agent of a real `orchestrate run` (with the image's python3), where the monitor
watches its workspace as in any run. It runs three parts for `--seconds` each and
reports the work done per second:

- python: a pure Python loop of integer arithmetic (loops per second);
- sha256: hashing a 1 MiB buffer again and again (MiB per second);
- files: creating, writing, reading and deleting 4 KiB files in the agent's
  workspace, a bind mount of a host folder (files per second). On the host it uses
  a folder on the same file system.

A third side runs the workload with a plain `docker run` (no limits, no hardening,
the image's python3), which separates the interpreter build and the container
itself from what orchestrate's settings add. The ratio is speed / host speed, so
1.0 means no overhead. The sides
alternate and the best run of each side counts, because other work on the machine
only ever slows a run down. When the manifest has an `isolation` setting and the
engine has the runsc runtime, the sandbox side also runs under gVisor.

Prints one JSON object. Run: .venv/bin/python bench/overhead.py [--seconds 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker
import docker.utils

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from bench.common import (  # noqa: E402
    BENCH_LABEL,
    docker_cli,
    machine_facts,
    orchestrate_command,
    target,
    unique_name,
    write_manifest,
)
from orchestrator.manifest import DEFAULT_IMAGE, Defaults  # noqa: E402

TARGET_CPU_RATIO = 0.98
PARTS = ("python", "sha256", "files")
RUN_TIMEOUT = 300.0

# Written into the manifest's source folder, so the agent reads it at /workspace/src/workload.py.
# It uses only the standard library, because the image holds nothing else.
WORKLOAD = '''\
import hashlib, json, os, sys, time

def python_loops(seconds):
    loops, total, deadline = 0, 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for value in range(10_000):
            total += value * value % 7
        loops += 1
    return loops / (time.perf_counter() - started)

def sha256_mib(seconds):
    buffer, hashed, deadline = os.urandom(1 << 20), 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        hashlib.sha256(buffer).digest()
        hashed += 1
    return hashed / (time.perf_counter() - started)

def file_cycles(seconds, folder):
    os.makedirs(folder, exist_ok=True)
    payload, done, deadline = os.urandom(4096), 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        names = [os.path.join(folder, "f%d" % index) for index in range(200)]
        for name in names:
            with open(name, "wb") as sink:
                sink.write(payload)
        for name in names:
            with open(name, "rb") as source:
                source.read()
        for name in names:
            os.unlink(name)
        done += len(names)
    os.rmdir(folder)
    return done / (time.perf_counter() - started)

seconds, output, scratch = float(sys.argv[1]), sys.argv[2], sys.argv[3]
figures = {"python": python_loops(seconds), "sha256": sha256_mib(seconds), "files": file_cycles(seconds, scratch),
           "python_version": sys.version.split()[0]}
with open(output, "w") as sink:
    json.dump(figures, sink)
'''


def run_on_host(folder: Path, python: str, seconds: float) -> dict[str, Any]:
    output = folder / "host-result.json"
    command = [python, str(folder / "src" / "workload.py"), str(seconds), str(output), str(folder / "host-scratch")]
    subprocess.run(command, check=True, timeout=RUN_TIMEOUT)
    return dict(json.loads(output.read_text(encoding="utf-8")))


def run_in_plain_container(folder: Path, seconds: float) -> dict[str, Any]:
    """Run the workload with `docker run` and no limits or hardening: the image's python3 at the engine's speed."""
    output = folder / "plain"
    output.mkdir(exist_ok=True)
    output.chmod(0o777)
    docker_cli("run", "--rm", "--network", "none", "--user", "1000:1000", "--label", f"{BENCH_LABEL}=overhead",
               "--mount", f"type=bind,source={folder / 'src'},target=/src,readonly",
               "--mount", f"type=bind,source={output},target=/output", "--entrypoint", "python3", DEFAULT_IMAGE,
               "/src/workload.py", str(seconds), "/output/result.json", "/output/scratch", timeout=RUN_TIMEOUT)
    return dict(json.loads((output / "result.json").read_text(encoding="utf-8")))


def run_in_sandbox(folder: Path, seconds: float, isolation: str | None) -> dict[str, Any]:
    name = unique_name("overhead")
    # A folder per run, so each run publishes into an output tree of its own.
    folder = folder / name
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "workload.py").write_text(WORKLOAD, encoding="utf-8")
    command = ["python3", "/workspace/src/workload.py", str(seconds), "/workspace/output/result.json",
               "/workspace/output/scratch"]
    # The agent claims its whole workspace, so the scratch files are ordinary work to the monitor.
    defaults: dict[str, Any] = {"timeout": "10m"}
    if isolation is not None:
        defaults["isolation"] = isolation
    manifest = write_manifest(folder, name, [{"name": "work", "command": command, "writes": ["**"]}],
                              defaults=defaults)
    runs = folder / "runs"
    completed = subprocess.run(
        orchestrate_command("-q", "run", str(manifest), "--runs-dir", str(runs), "--no-live", "--json"),
        capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT,
    )
    if completed.returncode != 0:
        raise SystemExit(f"the sandbox run failed with exit code {completed.returncode}: "
                         f"{completed.stdout[-1500:]}{completed.stderr[-1500:]}")
    run_id = json.loads(completed.stdout.splitlines()[-1])["run_id"]
    figures = json.loads((runs / run_id / "agents" / "work" / "result.json").read_text(encoding="utf-8"))
    shutil.rmtree(folder, ignore_errors=True)
    return dict(figures)


def gvisor_isolation(api: docker.APIClient) -> tuple[str | None, str]:
    """Return the manifest's gVisor isolation value, or None, and why gVisor is or is not measured."""
    if "isolation" not in Defaults.model_fields:
        return None, "not available: the manifest has no defaults.isolation setting"
    if "runsc" not in (api.info().get("Runtimes") or {}):
        return None, "not available: the engine has no runsc runtime (see `docker info`)"
    return "gvisor", "measured with defaults.isolation: gvisor"


def best(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {part: round(max(sample[part] for sample in samples), 1) for part in PARTS}


def ratios(sandbox: dict[str, float], host: dict[str, float]) -> dict[str, float]:
    return {part: round(sandbox[part] / host[part], 3) for part in PARTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds each workload part runs (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the best counts (default: 3)")
    parser.add_argument("--host-python", default=shutil.which("python3", path="/usr/bin") or sys.executable,
                        help="interpreter for the host side (default: %(default)s, like the image's python3)")
    options = parser.parse_args()
    if options.repeat < 1 or options.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds above 0")
    logging.basicConfig(level=logging.ERROR)
    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=120)
    isolation, gvisor_note = gvisor_isolation(api)

    samples: dict[str, list[dict[str, Any]]] = {"host": [], "plain_docker": [], "runc": [], "gvisor": []}
    with tempfile.TemporaryDirectory(prefix="orchestrate-overhead-") as scratch:
        folder = Path(scratch)
        (folder / "src").mkdir()
        (folder / "src" / "workload.py").write_text(WORKLOAD, encoding="utf-8")
        for attempt in range(options.repeat):
            sides = [("host", lambda: run_on_host(folder, options.host_python, options.seconds)),
                     ("plain_docker", lambda: run_in_plain_container(folder, options.seconds)),
                     ("runc", lambda: run_in_sandbox(folder, options.seconds, None))]
            if isolation is not None:
                sides.append(("gvisor", lambda: run_in_sandbox(folder, options.seconds, isolation)))
            # Alternate the order, so no side always runs first on a machine that drifts.
            for key, run in sides if attempt % 2 == 0 else reversed(sides):
                samples[key].append(run())

    speed = {key: best(values) for key, values in samples.items() if values}
    ratio = {key: ratios(values, speed["host"]) for key, values in speed.items() if key != "host"}
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "seconds_per_part": options.seconds,
        "repeat": options.repeat,
        "units": {"python": "loops/s", "sha256": "MiB/s", "files": "files/s"},
        "speed": speed,
        "ratio_to_host": ratio,
        "gvisor": gvisor_note,
        "python_host": samples["host"][0]["python_version"],
        "python_image": samples["runc"][0]["python_version"],
        "samples": samples,
    }
    result["targets"] = [
        target("CPU-bound (python loop) speed in the sandbox / host", ratio["runc"]["python"],
               TARGET_CPU_RATIO, unit="ratio", below=False),
        target("CPU-bound (sha256) speed in the sandbox / host", ratio["runc"]["sha256"],
               TARGET_CPU_RATIO, unit="ratio", below=False),
    ]
    result.update(machine_facts(api))
    api.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
