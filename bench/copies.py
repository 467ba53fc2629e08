"""Time private source copies: making them against plain `git clone`, walking them, and finding a conflict.

The source is a git repository made in a scratch folder from the files of `--from` (this project's own
package by default). Making N copies is compared with N plain `git clone --no-hardlinks` of the same
repository in the same run. Conflict detection writes one file in a first copy, then the same file in a
second copy, the way two agents' containers would through their bind mounts, and times until the copy
watch reports the `write-conflict`. No container runs, because host inotify reports a container's writes
to a bind mount the same way. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from orchestrator.copy_watch import RACY_WINDOW_NS, CopyState, CopyWatch
from orchestrator.source_copy import CopyRequest, copy_path, load_baseline, prepare_copies
from orchestrator.violations import Violation

REPOSITORY = Path(__file__).resolve().parent.parent


def make_repository(files: Path, target: Path) -> int:
    shutil.copytree(files, target, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    for command in (["init", "--quiet"], ["add", "--all"],
                    ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "--quiet", "-m", "x"]):
        subprocess.run(["git", "-C", str(target), *command], check=True)
    listing = subprocess.run(["git", "-C", str(target), "ls-files"], capture_output=True, text=True, check=True)
    return len(listing.stdout.splitlines())


def time_clones(source: Path, scratch: Path, copies: int) -> float:
    started = time.monotonic()
    for index in range(copies):
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source), str(scratch / f"clone-{index}")],
                       check=True)
    return time.monotonic() - started


class WatchPlan:
    """The two fields of a RunPlan that CopyWatch reads."""

    def __init__(self, run_dir: Path, agents: list[str]) -> None:
        self.run_dir = run_dir
        self.agents = [_Agent(name, copy_path(run_dir, name)) for name in agents]


class _Agent:
    def __init__(self, name: str, source_copy: Path) -> None:
        self.name = name
        self.source_copy = source_copy


async def detection_times(run_dir: Path, target: str, repeat: int) -> list[float]:
    arrived = anyio.Event()

    def report(_violation: Violation) -> None:
        nonlocal arrived
        arrived.set()

    plan = WatchPlan(run_dir, ["a0", "a1"])
    watch = CopyWatch(plan, report=report)  # type: ignore[arg-type]
    seconds = []
    async with anyio.create_task_group() as group:
        await group.start(watch.run)
        for index in range(repeat):
            path = f"{target}.bench-{index}"
            (copy_path(run_dir, "a0") / path).write_text("first\n", encoding="utf-8")
            await anyio.sleep(0.3)  # The first agent's change is recorded before the second one writes.
            arrived = anyio.Event()
            started = time.monotonic()
            (copy_path(run_dir, "a1") / path).write_text("second\n", encoding="utf-8")
            with anyio.fail_after(10):
                await arrived.wait()
            seconds.append(time.monotonic() - started)
        group.cancel_scope.cancel()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="files", type=Path, default=REPOSITORY / "orchestrator",
                        help="Folder whose files make the source repository (default: this project's package).")
    parser.add_argument("--copies", type=int, default=4, help="Copies to make (default 4).")
    parser.add_argument("--repeat", type=int, default=20, help="Conflicts to time (default 20).")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="orchestrate-bench-copies-") as folder:
        scratch = Path(folder)
        source = scratch / "source"
        files = make_repository(arguments.files, source)
        clone_seconds = time_clones(source, scratch, arguments.copies)

        run_dir = scratch / "run"
        run_dir.mkdir()
        agents = tuple((f"a{index}", 1000, 1000) for index in range(max(arguments.copies, 2)))
        started = time.monotonic()
        prepare_copies(CopyRequest(run_id="bench", run_dir=run_dir, source=source, agents=agents))
        copy_seconds = time.monotonic() - started

        baseline = load_baseline(run_dir)
        state = CopyState("a0", copy_path(run_dir, "a0"))
        # Files changed within the racy window are read on every walk; wait it out to time the usual walk.
        time.sleep(RACY_WINDOW_NS / 1e9)
        started = time.monotonic()
        state.rescan(baseline)
        first_walk = time.monotonic() - started
        started = time.monotonic()
        state.rescan(baseline)
        later_walk = time.monotonic() - started

        target = sorted(baseline.blobs)[0]
        detect = anyio.run(detection_times, run_dir, target, arguments.repeat)

    print(json.dumps({
        "benchmark": "copies",
        "files": files,
        "copies": len(agents),
        "copies_seconds": round(copy_seconds, 3),
        "git_clone_seconds": round(clone_seconds, 3),
        "copies_vs_git_clone": round(copy_seconds / clone_seconds, 2),
        "first_walk_ms": round(first_walk * 1000, 1),
        "later_walk_ms": round(later_walk * 1000, 1),
        "detect_median_ms": round(statistics.median(detect) * 1000, 1),
        "detect_max_ms": round(max(detect) * 1000, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
