"""Several processes publish into one output tree at once.

Each process is a fresh interpreter (the spawn start method), and a barrier
releases them together. After they finish, every file must be one process's
whole version. Each exclusive path must have one owner, and every other writer
of it must get a write conflict. Each append contribution must appear once and
unbroken, and the ledger must match the tree.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Iterator
from multiprocessing.managers import SyncManager
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.publish import PublishRequest
from orchestrator.publish.model import WRITE_CONFLICT

from .test_publish_support import (
    SUMMARY,
    check_ledger_matches_tree,
    make_request,
    publish_worker,
    publish_worker_to_queue,
    sha256,
    tree_files,
    write_files,
)

SPAWN = multiprocessing.get_context("spawn")
COMMON = "common.txt"
EXCLUSIVE_PATHS = ("a.txt", "docs/b.md", "docs/deep/c.md", COMMON)

Plan = tuple[PublishRequest, dict[str, bytes]]


def check_outcome(output: Path, plans: list[Plan], summaries: list[dict[str, Any]]) -> None:
    """Assert the invariants of concurrent publishing for processes that each published one plan."""
    for summary in summaries:
        assert summary["error"] is None, summary["error"]
    assert sorted(summary["agent"] for summary in summaries) == sorted(request.agent for request, _ in plans)

    by_agent = {summary["agent"]: summary for summary in summaries}
    versions: dict[str, dict[str, bytes]] = {}
    for request, files in plans:
        for path, content in files.items():
            versions.setdefault(path, {})[request.agent] = content
    run_dirs = {request.agent: request.run_dir for request, _ in plans}

    tree = tree_files(output)
    assert sorted(tree) == sorted(versions)
    for summary in summaries:
        assert {kind for kind, _path, _detail in summary["findings"]} <= {WRITE_CONFLICT}

    for path, writers in versions.items():
        if path == SUMMARY:
            check_append(tree[path], writers, by_agent)
            continue
        assert tree[path] in writers.values(), f"{path} is not any one process's whole version"

        created = [
            agent for agent in writers if [path, "created", sha256(writers[agent])] in by_agent[agent]["published"]
        ]
        assert len(created) == 1, f"{path} was created by {created}"
        winner = created[0]
        assert tree[path] == writers[winner]

        conflicted = sorted(
            summary["agent"]
            for summary in summaries
            for kind, finding_path, _detail in summary["findings"]
            if kind == WRITE_CONFLICT and finding_path == path
        )
        assert conflicted == sorted(set(writers) - {winner})
        for loser in conflicted:
            evidence = run_dirs[loser] / "conflicts" / loser / path
            assert evidence.read_bytes() == writers[loser]

    check_ledger_matches_tree(output)


def check_append(content: bytes, writers: dict[str, bytes], by_agent: dict[str, dict[str, Any]]) -> None:
    for agent, contribution in writers.items():
        assert [SUMMARY, "appended", sha256(contribution)] in by_agent[agent]["published"]
        assert content.count(contribution) == 1, f"{agent}'s contribution is not in {SUMMARY} exactly once"
    separators = len(writers) - 1
    assert len(content) - sum(len(item) for item in writers.values()) <= separators


def test_four_processes_publish(tmp_path: Path) -> None:
    plans: list[Plan] = []
    for index in range(4):
        request = make_request(tmp_path, f"agent{index}", run_id=f"run-{index}")
        files = {
            f"agent{index}/file{number:03}.txt": f"agent {index} file {number}\n".encode() * 20 for number in range(100)
        }
        files[COMMON] = f"common version of agent {index}\n".encode() * 50 * (index + 1)
        files[SUMMARY] = f"summary of agent {index}\n".encode() * 3
        write_files(request.workspace, files)
        plans.append((request, files))

    barrier = SPAWN.Barrier(len(plans))
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=publish_worker_to_queue, args=(request, barrier, results)) for request, _files in plans
    ]
    for process in processes:
        process.start()
    summaries = [results.get(timeout=120) for _process in processes]
    for process in processes:
        process.join(timeout=60)

    assert [process.exitcode for process in processes] == [0] * len(processes)
    conflicts = [finding for summary in summaries for finding in summary["findings"]]
    assert [(kind, path) for kind, path, _detail in conflicts] == [(WRITE_CONFLICT, COMMON)] * 3
    check_outcome(tmp_path / "output", plans, summaries)


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[Pool, SyncManager]]:
    """Four spawned worker processes, kept for every example of the property test, and a manager for barriers."""
    with SPAWN.Manager() as manager, SPAWN.Pool(4) as pool:
        yield pool, manager


CONTENT = st.text(alphabet="ab\n", max_size=40)
PROCESS_PLAN = st.tuples(
    st.sets(st.sampled_from((*EXCLUSIVE_PATHS, SUMMARY))),
    st.fixed_dictionaries({path: CONTENT for path in (*EXCLUSIVE_PATHS, SUMMARY)}),
)


@settings(max_examples=15, deadline=None)
@given(schedule=st.lists(PROCESS_PLAN, min_size=2, max_size=4))
def test_concurrent_schedule(
    workers: tuple[Pool, SyncManager], schedule: list[tuple[set[str], dict[str, str]]]
) -> None:
    pool, manager = workers
    with tempfile.TemporaryDirectory(prefix="orchestrate-publish-schedule-") as folder:
        base = Path(folder)
        plans: list[Plan] = []
        for index, (paths, texts) in enumerate(schedule):
            request = make_request(base, f"agent{index}", run_id=f"run-{index}")
            # The tag makes every version unique, so a file's content names the process that wrote it.
            files = {path: f"[agent{index} {path}]".encode() + texts[path].encode() for path in paths}
            write_files(request.workspace, files)
            plans.append((request, files))

        barrier = manager.Barrier(len(plans))
        pending = [pool.apply_async(publish_worker, (request, barrier)) for request, _files in plans]
        summaries = [result.get(timeout=120) for result in pending]

        check_outcome(base / "output", plans, summaries)
