"""Run states from the run lock and result.json: active, finished, dead."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.status import RunLock, is_active, run_detail, run_statuses


def make_run(root: Path, run_id: str, *, result: bool) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps({"agents": [{"name": "a"}, {"name": "b"}]}))
    if result:
        (folder / "result.json").write_text(json.dumps({"exit_code": 1}))
    return folder


def test_held_lock_means_active(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "run-a", result=False)
    lock = RunLock(folder)

    assert is_active(folder) is True
    lock.release()
    assert is_active(folder) is False


def test_states_from_folders_and_containers(tmp_path: Path) -> None:
    active = make_run(tmp_path, "run-active", result=False)
    make_run(tmp_path, "run-finished", result=True)
    make_run(tmp_path, "run-dead", result=False)
    lock = RunLock(active)
    containers = [
        {"Labels": {"orchestrate.run": "run-dead", "orchestrate.agent": "a"}, "State": "exited"},
        {"Labels": {"orchestrate.run": "run-gone", "orchestrate.agent": "a"}, "State": "running"},
    ]

    statuses = {item.run_id: item for item in run_statuses(tmp_path, containers)}
    lock.release()

    assert statuses["run-active"].state == "active"
    assert statuses["run-finished"].state == "finished"
    assert statuses["run-finished"].exit_code == 1
    assert statuses["run-dead"].state == "dead"
    assert statuses["run-dead"].containers == 1
    assert statuses["run-dead"].agents == 2
    assert statuses["run-gone"].state == "unknown folder"
    assert statuses["run-gone"].running == 1


def test_detail_names_broker_by_role(tmp_path: Path) -> None:
    make_run(tmp_path, "run-a", result=True)
    containers = [
        {"Id": "a" * 64, "Labels": {"orchestrate.run": "run-a", "orchestrate.agent": "a"}, "State": "running"},
        {"Id": "b" * 64, "Labels": {"orchestrate.run": "run-a", "orchestrate.role": "broker"}, "State": "running"},
    ]

    detail = run_detail(tmp_path, "run-a", containers)

    assert detail is not None
    names = [row.agent for row in detail.agents]
    assert names == ["a", "b", "(broker)"]
