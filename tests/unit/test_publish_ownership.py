"""Who may write a path: the first owner of an exclusive path, and each owner once per content of an append path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.publish import publish_agent
from orchestrator.publish.model import WRITE_CONFLICT

from .test_publish_support import (
    SUMMARY,
    actions,
    check_ledger_matches_tree,
    finding_kinds,
    ledger_records,
    make_request,
    write_files,
)


@pytest.mark.parametrize(("manifest", "agent"), [("demo", "intruder"), ("other-manifest", "writer")])
def test_second_owner_conflicts(tmp_path: Path, manifest: str, agent: str) -> None:
    owner = make_request(tmp_path, "writer", run_id="run-1")
    write_files(owner.workspace, {"docs/report.md": "owner\n"})
    publish_agent(owner)
    newcomer = make_request(tmp_path, agent, manifest=manifest, run_id="run-2")
    write_files(newcomer.workspace, {"docs/report.md": "newcomer\n", "docs/own.md": "own\n"})

    report = publish_agent(newcomer)

    assert finding_kinds(report) == {"docs/report.md": WRITE_CONFLICT}
    assert actions(report) == {"docs/own.md": "created"}
    assert (tmp_path / "output" / "docs" / "report.md").read_bytes() == b"owner\n"
    evidence = newcomer.run_dir / "conflicts" / agent / "docs" / "report.md"
    assert evidence.read_bytes() == b"newcomer\n"
    assert str(evidence) in report.findings[0].detail
    check_ledger_matches_tree(tmp_path / "output")


def test_same_owner_replaces(tmp_path: Path) -> None:
    first = make_request(tmp_path, "writer", run_id="run-1")
    write_files(first.workspace, {"report.md": "first\n"})
    publish_agent(first)
    second = make_request(tmp_path, "writer", run_id="run-2")
    write_files(second.workspace, {"report.md": "second\n"})

    report = publish_agent(second)

    assert report.findings == []
    assert actions(report) == {"report.md": "replaced"}
    assert (tmp_path / "output" / "report.md").read_bytes() == b"second\n"
    check_ledger_matches_tree(tmp_path / "output")


def test_same_content_unchanged(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"report.md": "same\n"})
    publish_agent(request)
    inode = (tmp_path / "output" / "report.md").stat().st_ino
    records = len(ledger_records(tmp_path / "output"))

    report = publish_agent(make_request(tmp_path, "writer", run_id="run-2"))

    assert actions(report) == {"report.md": "unchanged"}
    assert report.findings == []
    assert (tmp_path / "output" / "report.md").stat().st_ino == inode
    assert len(ledger_records(tmp_path / "output")) == records


def test_mode_change_replaces(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"run.sh": "#!/bin/sh\n"})
    publish_agent(request)
    os.chmod(request.workspace / "run.sh", 0o755)

    report = publish_agent(make_request(tmp_path, "writer", run_id="run-2"))

    assert actions(report) == {"run.sh": "replaced"}
    assert stat.S_IMODE((tmp_path / "output" / "run.sh").stat().st_mode) == 0o755


def test_deleted_path_one_conflict(tmp_path: Path) -> None:
    owner = make_request(tmp_path, "writer", run_id="run-1")
    write_files(owner.workspace, {"report.md": "owner\n"})
    publish_agent(owner)
    (tmp_path / "output" / "report.md").unlink()
    newcomer = make_request(tmp_path, "intruder", run_id="run-2")
    write_files(newcomer.workspace, {"report.md": "newcomer\n"})
    write_files(owner.workspace, {"report.md": "owner again\n"})

    newcomer_report = publish_agent(newcomer)
    owner_report = publish_agent(make_request(tmp_path, "writer", run_id="run-3"))

    # Two owners wrote one exclusive path, so one of them must get the conflict.
    findings = newcomer_report.findings + owner_report.findings
    assert [(finding.kind, finding.path) for finding in findings] == [(WRITE_CONFLICT, "report.md")]


def test_file_not_in_ledger_conflicts(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"report.md": "agent\n"})
    write_files(tmp_path / "output", {"report.md": "written by hand\n"})

    report = publish_agent(request)

    assert finding_kinds(report) == {"report.md": WRITE_CONFLICT}
    assert report.published == []
    assert (tmp_path / "output" / "report.md").read_bytes() == b"written by hand\n"
    assert (request.run_dir / "conflicts" / "writer" / "report.md").read_bytes() == b"agent\n"


def test_folder_in_place_of_file_conflicts(tmp_path: Path) -> None:
    request = make_request(tmp_path, "writer")
    write_files(request.workspace, {"report.md": "agent\n"})
    write_files(tmp_path / "output", {"report.md/inside.txt": "kept\n"})

    report = publish_agent(request)

    assert finding_kinds(report) == {"report.md": WRITE_CONFLICT}
    assert (tmp_path / "output" / "report.md" / "inside.txt").read_bytes() == b"kept\n"


def test_append_two_agents_in_order(tmp_path: Path) -> None:
    for agent in ("alpha", "beta"):
        request = make_request(tmp_path, agent)
        write_files(request.workspace, {SUMMARY: f"{agent} finished\n"})
        report = publish_agent(request)
        assert actions(report) == {SUMMARY: "appended"}

    assert (tmp_path / "output" / SUMMARY).read_bytes() == b"alpha finished\nbeta finished\n"
    check_ledger_matches_tree(tmp_path / "output")


def test_append_same_content_once(tmp_path: Path) -> None:
    request = make_request(tmp_path, "alpha")
    write_files(request.workspace, {SUMMARY: "alpha finished\n"})
    publish_agent(request)

    report = publish_agent(make_request(tmp_path, "alpha", run_id="run-2"))

    assert actions(report) == {SUMMARY: "unchanged"}
    assert (tmp_path / "output" / SUMMARY).read_bytes() == b"alpha finished\n"


def test_append_new_content_appends(tmp_path: Path) -> None:
    alpha = make_request(tmp_path, "alpha")
    beta = make_request(tmp_path, "beta")
    write_files(alpha.workspace, {SUMMARY: "alpha one"})
    publish_agent(alpha)
    write_files(beta.workspace, {SUMMARY: "beta one\n"})
    publish_agent(beta)
    write_files(alpha.workspace, {SUMMARY: "alpha two\n"})

    report = publish_agent(make_request(tmp_path, "alpha", run_id="run-2"))

    assert actions(report) == {SUMMARY: "appended"}
    assert (tmp_path / "output" / SUMMARY).read_bytes() == b"alpha one\nbeta one\nalpha two\n"
    check_ledger_matches_tree(tmp_path / "output")


def test_append_keeps_existing_text(tmp_path: Path) -> None:
    write_files(tmp_path / "output", {SUMMARY: "# Summary"})
    request = make_request(tmp_path, "alpha")
    write_files(request.workspace, {SUMMARY: "alpha finished\n"})

    report = publish_agent(request)

    assert actions(report) == {SUMMARY: "appended"}
    assert (tmp_path / "output" / SUMMARY).read_bytes() == b"# Summary\nalpha finished\n"
