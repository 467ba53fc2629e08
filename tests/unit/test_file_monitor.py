"""The file monitor on real folders and real inotify: each kind of violation, floods, the polling fallback."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator import workspace
from orchestrator.activity import Activity
from orchestrator.file_rules import ClaimMap, Entry, escape_problem
from orchestrator.plan import RunPlan
from orchestrator.violations import Violation
from orchestrator.workspace_watch import FileMonitor
from tests.unit.conftest import agent, manifest_data

TWO_WRITERS = {
    "agents": [agent("alpha", writes=["alpha/**"]), agent("beta", writes=["beta/**"])],
    "shared": [{"path": "SUMMARY.md", "mode": "append"}, {"path": "report.md", "mode": "exclusive"}],
}


class Recorder:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.activity: list[Activity] = []
        self.ready: list[tuple[str, set[str]]] = []
        self.seen = anyio.Event()

    def report(self, violation: Violation) -> None:
        self.violations.append(violation)
        self.seen.set()

    def kinds(self) -> set[tuple[str, str, str]]:
        return {(item.kind, item.agent, item.subject) for item in self.violations}


@pytest.fixture
def two_writers(plan_for: Callable[..., RunPlan], source_dir: Path) -> RunPlan:
    plan = plan_for(manifest_data(source_dir, **TWO_WRITERS))
    workspace.prepare(plan)
    return plan


def run_monitor(plan: RunPlan, act: Callable[[FileMonitor, Recorder], Awaitable[None]], **options: Any) -> Recorder:
    recorder = Recorder()

    async def main() -> None:
        monitor = FileMonitor(plan, report=recorder.report, listener=recorder.activity.append,
                              publish_ready=lambda agent, paths: recorder.ready.append((agent, paths)), **options)
        async with anyio.create_task_group() as group:
            await group.start(monitor.run)
            await act(monitor, recorder)
            group.cancel_scope.cancel()

    anyio.run(main)
    return recorder


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - the conditions read plain state, with no event to wait on.
            await anyio.sleep(0.01)


def ws(plan: RunPlan, name: str) -> Path:
    return next(item.workspace for item in plan.agents if item.name == name)


def test_conflict_second_exclusive_writer(two_writers: RunPlan) -> None:
    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (ws(two_writers, "alpha") / "report.md").write_text("alpha's\n")
        await anyio.sleep(0.1)
        started = time.monotonic()
        (ws(two_writers, "beta") / "report.md").write_text("beta's\n")
        await until(lambda: any(v.kind == "write-conflict" for v in recorder.violations))
        assert time.monotonic() - started < 0.5

    recorder = run_monitor(two_writers, act)
    conflict = [v for v in recorder.violations if v.kind == "write-conflict"]
    assert [(v.agent, v.subject) for v in conflict] == [("beta", "report.md")]
    assert conflict[0].evidence["first_writer"] == "alpha"


def test_conflict_write_into_other_claim(two_writers: RunPlan) -> None:
    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (ws(two_writers, "beta") / "alpha").mkdir()
        (ws(two_writers, "beta") / "alpha" / "x.md").write_text("mine now\n")
        await until(lambda: bool(recorder.violations))

    recorder = run_monitor(two_writers, act)
    assert ("write-conflict", "beta", "alpha/x.md") in recorder.kinds()


def test_each_file_kind_is_judged(two_writers: RunPlan) -> None:
    alpha = ws(two_writers, "alpha")

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (alpha / "stray.txt").write_text("outside every claim\n")
        (alpha / "alpha").mkdir()
        os.symlink("/etc/shadow", alpha / "alpha" / "link")
        os.symlink("ok.md", alpha / "alpha" / "inside")
        os.mkfifo(alpha / "alpha" / "pipe")
        (alpha / "alpha" / "ok.md").write_text("fine\n")
        os.link(alpha / "alpha" / "ok.md", alpha / "alpha" / "twin.md")
        (alpha / "alpha" / "tool").write_text("#!/bin/sh\n")
        os.chmod(alpha / "alpha" / "tool", 0o4755)
        (alpha / "SUMMARY.md").write_text("appended\n")
        await anyio.sleep(0.5)

    recorder = run_monitor(two_writers, act)
    kinds = recorder.kinds()
    assert ("claim-violation", "alpha", "stray.txt") in kinds
    assert ("escape-attempt", "alpha", "alpha/link") in kinds
    assert ("escape-attempt", "alpha", "alpha/pipe") in kinds
    assert ("escape-attempt", "alpha", "alpha/tool") in kinds
    assert ("escape-attempt", "alpha", "alpha/twin.md") in kinds
    assert not any(subject in ("alpha/inside", "SUMMARY.md") for _kind, _agent, subject in kinds)


def test_publish_offers_closed_files_only(two_writers: RunPlan) -> None:
    alpha = ws(two_writers, "alpha")

    (alpha / "alpha").mkdir()

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (alpha / "alpha" / "a.md").write_text("a\n")
        (alpha / "SUMMARY.md").write_text("line\n")
        (alpha / "alpha" / "new").mkdir()
        (alpha / "alpha" / "new" / "b.md").write_text("b\n")
        await anyio.sleep(0.3)

    recorder = run_monitor(two_writers, act)
    offered = set().union(*(paths for name, paths in recorder.ready if name == "alpha"))
    # a.md was closed under a watch. b.md was only found by the scan of its new folder, with no close seen,
    # so it could still be open for writing: it waits for the agent's exit.
    assert "alpha/a.md" in offered
    assert "alpha/new/b.md" not in offered
    assert "SUMMARY.md" not in offered
    assert not recorder.violations


def test_quota_is_checked_on_bytes(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[agent("alpha", writes=["**"])],
                                  limits={"max_total_bytes": 1000}))
    workspace.prepare(plan)

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (plan.agents[0].workspace / "big.bin").write_bytes(b"x" * 2000)
        await anyio.sleep(0.3)

    recorder = run_monitor(plan, act)
    assert ("quota-exceeded", "alpha", "") in recorder.kinds()


def test_flood_planted_link_seen(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[agent("alpha", writes=["**"])]))
    workspace.prepare(plan)
    root = plan.agents[0].workspace

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        for folder in range(20):
            (root / f"d{folder}").mkdir()
            for index in range(1000):
                (root / f"d{folder}" / f"f{index}").write_bytes(b"")
            if folder == 10:
                os.symlink("/root/.ssh/id_rsa", root / "d10" / "planted")
        monitor.request_rescan()
        await until(lambda: monitor.states["alpha"].files >= 20_001, seconds=20)

    recorder = run_monitor(plan, act)
    assert [(v.kind, v.subject) for v in recorder.violations] == [("escape-attempt", "d10/planted")]


def test_watch_limit_falls_back_polling(two_writers: RunPlan) -> None:
    alpha = ws(two_writers, "alpha")

    recorder = Recorder()

    async def main() -> None:
        monitor = FileMonitor(two_writers, report=recorder.report, listener=recorder.activity.append, max_watches=1)
        async with anyio.create_task_group() as group:
            await group.start(monitor.run)
            assert monitor.states["beta"].polling
            (alpha / "stray.txt").write_text("outside\n")
            await until(lambda: bool(recorder.violations), seconds=5)
            group.cancel_scope.cancel()

    anyio.run(main)
    assert ("claim-violation", "alpha", "stray.txt") in recorder.kinds()
    assert any(item.data.get("monitor") == "polling" for item in recorder.activity)


@pytest.mark.parametrize(
    ("path", "target", "escapes"),
    [("a/l", "../b", False), ("a/l", "../../x", True), ("l", "/workspace/output/x", False), ("l", "/etc", True)],
)
def test_symlink_targets(path: str, target: str, escapes: bool) -> None:
    entry = Entry(path, 0o120777, 1, 1, target)
    assert (escape_problem(entry) is not None) is escapes


def test_claim_map_rules() -> None:
    claims = ClaimMap({"a": ["docs/**"], "b": ["src/**"]}, [("notes.md", "exclusive"), ("log.md", "append")])
    assert claims.judge_write("a", "docs/x.md", "a") is None
    assert claims.judge_write("a", "notes.md", "a") is None
    finding = claims.judge_write("b", "notes.md", "a")
    assert finding is not None and finding.kind == "write-conflict"
    assert claims.judge_write("b", "log.md", "a") is None
    finding = claims.judge_write("a", "src/y.py", "a")
    assert finding is not None and finding.kind == "write-conflict"
    finding = claims.judge_write("a", "other.txt", "a")
    assert finding is not None and finding.kind == "claim-violation"
    finding = claims.judge_write("a", ".orchestrate/ledger", "a")
    assert finding is not None and finding.kind == "claim-violation"


def test_conflict_blames_intruder_not_owner(
    plan_for: Callable[..., RunPlan], source_dir: Path
) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[agent("owner", writes=["reports/**"]), agent("intruder")]))
    workspace.prepare(plan)

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        (ws(plan, "intruder") / "reports").mkdir()
        (ws(plan, "intruder") / "reports" / "x.md").write_text("first, but not the owner\n")
        await until(lambda: bool(recorder.violations))
        (ws(plan, "owner") / "reports").mkdir()
        (ws(plan, "owner") / "reports" / "x.md").write_text("the owner's\n")
        await anyio.sleep(0.3)

    recorder = run_monitor(plan, act)
    assert [(v.kind, v.agent) for v in recorder.violations] == [("write-conflict", "intruder")]


def test_escape_through_self_link(two_writers: RunPlan) -> None:
    # With `s -> .`, s/s/../.. climbs out although the text normalizes to a path inside.
    alpha = ws(two_writers, "alpha")
    (alpha / "alpha").mkdir()

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        os.symlink(".", alpha / "alpha" / "s")
        os.symlink("/".join(["s"] * 5 + [".."] * 5 + ["etc", "shadow"]), alpha / "alpha" / "t")
        await until(lambda: any(v.subject == "alpha/t" for v in recorder.violations))

    recorder = run_monitor(two_writers, act)
    assert ("escape-attempt", "alpha", "alpha/t") in recorder.kinds()
    assert ("escape-attempt", "alpha", "alpha/s") not in recorder.kinds()


def test_escape_exchanged_link_judged(two_writers: RunPlan) -> None:
    # renameat2(RENAME_EXCHANGE) moves the old name out and the link in, in one batch of events.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    alpha = ws(two_writers, "alpha")
    (alpha / "alpha").mkdir()
    (alpha / "alpha" / "ok").write_text("fine\n")

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        await anyio.sleep(0.1)
        os.symlink("/etc/shadow", alpha / "alpha" / "tmp")
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, str(alpha / "alpha" / "tmp").encode(), at_fdcwd,
                                str(alpha / "alpha" / "ok").encode(), rename_exchange)
        assert result == 0, os.strerror(ctypes.get_errno())
        await until(lambda: any(v.subject == "alpha/ok" for v in recorder.violations))

    recorder = run_monitor(two_writers, act)
    assert ("escape-attempt", "alpha", "alpha/ok") in recorder.kinds()


def test_walk_swapped_folder_not_followed(two_writers: RunPlan, tmp_path: Path) -> None:
    # The monitor must not list, watch or report anything outside the workspace.
    outside = tmp_path / "host-secrets"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "secret.conf").write_text("host data\n")
    alpha = ws(two_writers, "alpha")
    (alpha / "alpha" / "a" / "inner").mkdir(parents=True)

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        await anyio.sleep(0.1)
        os.rename(alpha / "alpha" / "a", alpha / "alpha" / "a2")
        os.symlink(str(outside), alpha / "alpha" / "a")
        (alpha / "alpha" / "a2" / "inner" / "new").mkdir()
        await anyio.sleep(0.5)
        monitor.request_rescan()
        await anyio.sleep(0.5)

    recorder = run_monitor(two_writers, act)
    assert not any("secret" in v.subject or "inner/secret" in v.detail for v in recorder.violations)
    assert ("escape-attempt", "alpha", "alpha/a") in recorder.kinds()


def test_folders_nested_too_deep_are_a_violation(two_writers: RunPlan) -> None:
    alpha = ws(two_writers, "alpha")

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        deep = alpha / "alpha" / "/".join(["d"] * 70)
        deep.mkdir(parents=True)
        monitor.request_rescan("alpha")
        await until(lambda: any(v.kind == "quota-exceeded" for v in recorder.violations), seconds=10)

    recorder = run_monitor(two_writers, act)
    assert any(v.kind == "quota-exceeded" and "deeper than 64" in v.detail for v in recorder.violations)


def test_escape_redirected_by_later_link(two_writers: RunPlan) -> None:
    # L -> d/d/d/d/../../../../etc/passwd stays inside until d -> . appears.
    alpha = ws(two_writers, "alpha")
    (alpha / "alpha").mkdir()

    async def act(monitor: FileMonitor, recorder: Recorder) -> None:
        os.symlink("d/d/d/d/../../../../etc/passwd", alpha / "alpha" / "L")
        await anyio.sleep(0.2)
        os.symlink(".", alpha / "alpha" / "d")
        await until(lambda: any(v.subject == "alpha/L" for v in recorder.violations))

    recorder = run_monitor(two_writers, act)
    assert ("escape-attempt", "alpha", "alpha/L") in recorder.kinds()


def test_escape_slow_link_judged_fast() -> None:
    # Kilobytes of d/../ through chained links would keep the event loop busy for seconds without a cap.
    from orchestrator.symlinks import link_escapes

    segment = "d/" * 60 + "../" * 60
    body = segment * (4000 // len(segment))
    links = {f"k{index}": body + f"k{index + 1}" for index in range(40)}

    def readlink(path: str) -> str | None:
        return links.get(path.rsplit("/", 1)[-1]) if "/" not in path or path.startswith("d") is False else None

    started = time.monotonic()
    assert link_escapes((), "k0", readlink) is True
    assert time.monotonic() - started < 0.5
