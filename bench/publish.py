"""Benchmark: publish many small files from one workspace, against `cp -r` of the same files.

Prints one JSON object. Both sides copy the same files into an empty folder on
the same file system in the same run, so the ratio stays comparable across
machines even when absolute times drift. The publisher's figure includes everything a real
publish does: the walk without following links, staging, one flush of the file
system, a file lock and a ledger record per file, and the final rename.

Run: .venv/bin/python bench/publish.py [--files 10000] [--size 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import __version__  # noqa: E402
from orchestrator.publish import PublishLimits, PublishRequest, publish_agent  # noqa: E402


def make_workspace(root: Path, files: int, size: int) -> Path:
    workspace = root / "workspace"
    per_folder = 1000
    for index in range(files):
        folder = workspace / f"part-{index // per_folder:03d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"file-{index:06d}.txt").write_bytes(os.urandom(size // 2).hex().encode()[:size])
    return workspace


def time_publish(root: Path, workspace: Path, attempt: int) -> float:
    output = root / f"published-{attempt}"
    run_dir = root / f"run-{attempt}"
    run_dir.mkdir()
    request = PublishRequest(
        output=output,
        run_id=f"bench-{attempt}",
        run_dir=run_dir,
        manifest_name="bench",
        agent="writer",
        workspace=workspace,
        claims=["part-*/**"],
        shared=[],
        limits=PublishLimits(max_file_size=1 << 20, max_total_bytes=1 << 34, max_files=1_000_000),
    )
    started = time.perf_counter()
    report = publish_agent(request)
    seconds = time.perf_counter() - started
    if report.findings or len(report.published) == 0:
        raise SystemExit(f"publish reported problems: {report.findings[:3]}")
    return seconds


def time_copy(root: Path, workspace: Path, attempt: int) -> float:
    target = root / f"copied-{attempt}"
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(workspace), str(target)], check=True)
    # A fair comparison: the publisher flushes its staged files to disk once, so cp gets one sync too.
    subprocess.run(["sync", "-f", str(target)], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="number of files to publish")
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the best one counts")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the files (default: a temp folder)")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="orchestrate-bench-", dir=options.scratch))
    try:
        workspace = make_workspace(scratch, options.files, options.size)
        publish_times, copy_times = [], []
        for attempt in range(options.repeat):
            # Alternate the order, so neither side always meets a warm or a cold page cache.
            if attempt % 2 == 0:
                publish_times.append(time_publish(scratch, workspace, attempt))
                copy_times.append(time_copy(scratch, workspace, attempt))
            else:
                copy_times.append(time_copy(scratch, workspace, attempt))
                publish_times.append(time_publish(scratch, workspace, attempt))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    publish_best, copy_best = min(publish_times), min(copy_times)
    result = {
        "benchmark": "publish",
        "files": options.files,
        "file_bytes": options.size,
        "publish_seconds": round(publish_best, 3),
        "publish_files_per_second": round(options.files / publish_best),
        "cp_seconds": round(copy_best, 3),
        "cp_files_per_second": round(options.files / copy_best),
        "speed_vs_cp": round(copy_best / publish_best, 3),
        "targets": {"files_per_second": 10_000, "speed_vs_cp": 0.5},
        "all_publish_seconds": [round(value, 3) for value in publish_times],
        "all_cp_seconds": [round(value, 3) for value in copy_times],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "orchestrate": __version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
