"""The provenance ledger after a series of publishes: one record per change, matching the output tree."""

from __future__ import annotations

from pathlib import Path

from orchestrator.provenance import history
from orchestrator.publish import publish_agent

from .test_publish_support import SUMMARY, check_ledger_matches_tree, make_request, sha256, write_files


def publish_series(base: Path) -> Path:
    """Publish from two agents over three runs, with creates, replaces, conflicts, appends and unchanged files."""
    alpha = make_request(base, "alpha", run_id="run-1")
    beta = make_request(base, "beta", run_id="run-1")
    write_files(alpha.workspace, {"docs/a.md": "a1\n", "shared.md": "alpha\n", SUMMARY: "alpha 1\n", "x.bin": b"\0"})
    write_files(beta.workspace, {"docs/b.md": "b1\n", "shared.md": "beta\n", SUMMARY: "beta 1\n"})
    publish_agent(alpha)
    publish_agent(beta)

    write_files(alpha.workspace, {"docs/a.md": "a2\n", SUMMARY: "alpha 2\n"})
    publish_agent(make_request(base, "alpha", run_id="run-2"))
    publish_agent(make_request(base, "beta", run_id="run-2"))
    return base / "output"


def test_ledger_matches_tree(tmp_path: Path) -> None:
    output = publish_series(tmp_path)

    check_ledger_matches_tree(output)


def test_ledger_record_fields(tmp_path: Path) -> None:
    output = publish_series(tmp_path)

    first = history(output, "docs/a.md")[0]

    assert first["path"] == "docs/a.md"
    assert first["run"] == "run-1"
    assert first["agent"] == "alpha"
    assert first["owner"] == "demo/alpha"
    assert first["sha256"] == sha256(b"a1\n")
    assert first["size"] == 3
    assert first["mode"] == "644"
    assert first["action"] == "created"
    assert first["time"].endswith("Z")


def test_history_of_replaced_file(tmp_path: Path) -> None:
    output = publish_series(tmp_path)

    records = history(output, "docs/a.md")

    assert [(record["run"], record["action"]) for record in records] == [("run-1", "created"), ("run-2", "replaced")]
    assert records[-1]["sha256"] == sha256((output / "docs" / "a.md").read_bytes())


def test_history_of_append_path(tmp_path: Path) -> None:
    output = publish_series(tmp_path)

    records = history(output, str(output / SUMMARY))

    assert [(record["agent"], record["action"]) for record in records] == [
        ("alpha", "appended"),
        ("beta", "appended"),
        ("alpha", "appended"),
    ]


def test_conflict_not_recorded(tmp_path: Path) -> None:
    output = publish_series(tmp_path)

    records = history(output, "shared.md")

    assert [record["agent"] for record in records] == ["alpha"]
