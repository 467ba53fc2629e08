"""Publishing from real agent containers: escape attempts, two runs at once, provenance and the audit log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ORCHESTRATE, Project, run_result

ESCAPES = r"""
set -u
mkdir -p out
echo fine > out/ok.txt
ln -s /etc/passwd out/passwd
ln -s ../../other/secret out/neighbour
ln -s inner.txt out/inner-link
mkfifo out/pipe
python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.bind('out/sock')"
echo run > out/tool && chmod u+s out/tool
head -c 2000 /dev/zero > out/big.bin
mkdir -p many && for i in $(seq 1 12); do echo $i > many/f$i; done
touch "$(printf 'out/bad\033name')"
echo outside-claims > stray.txt
"""


def _findings(result: dict[str, Any], agent: str) -> dict[str, set[str]]:
    item = next(entry for entry in result["agents"] if entry["name"] == agent)
    kinds: dict[str, set[str]] = {}
    for finding in item["publish_findings"]:
        kinds.setdefault(finding["kind"], set()).add(finding["path"])
    return kinds


def _tree(root: Path) -> dict[str, bytes]:
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] == ".orchestrate" or not path.is_file() or path.is_symlink():
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files


@pytest.fixture
def escape_run(project: Project) -> dict[str, Any]:
    output = project.root / "published"
    manifest = project.manifest(
        [{
            "name": "escaper",
            "command": ["sh", "-c", ESCAPES],
            "writes": ["out/**", "many/**"],
            "limits": {"max_file_size": 1000, "max_files": 10},
        }],
        output=str(output),
        # The monitor would stop this run at the first escape; at warn the publisher's own checks are tested.
        policy={kind: "warn" for kind in ("escape-attempt", "claim-violation", "quota-exceeded", "write-conflict")},
    )
    code, result = project.run_json(manifest)
    return {"code": code, "result": result, "output": output}


def test_escape_run_fails_with_violation(escape_run: dict[str, Any]) -> None:
    agent = escape_run["result"]["agents"][0]
    assert escape_run["code"] == 1
    assert agent["state"] == "violation"


def test_symlinks_out_are_escape_attempts(escape_run: dict[str, Any]) -> None:
    escapes = _findings(escape_run["result"], "escaper")["escape-attempt"]
    assert "out/passwd" in escapes
    assert "out/neighbour" in escapes


def test_special_files_are_escape_attempts(escape_run: dict[str, Any]) -> None:
    escapes = _findings(escape_run["result"], "escaper")["escape-attempt"]
    assert "out/pipe" in escapes
    assert "out/sock" in escapes
    assert "out/tool" in escapes


def test_limits_and_claims_reported(escape_run: dict[str, Any]) -> None:
    findings = _findings(escape_run["result"], "escaper")
    assert "out/big.bin" in findings["limit-exceeded"]
    assert len(findings["limit-exceeded"]) == 2
    assert findings["claim-violation"] == {"stray.txt"}
    assert findings["invalid-name"] == {"out/bad\\u001bname"}


def test_only_safe_files_published(escape_run: dict[str, Any]) -> None:
    tree = _tree(escape_run["output"])
    assert tree["out/ok.txt"] == b"fine\n"
    assert "out/passwd" not in tree
    assert "out/pipe" not in tree
    assert "out/tool" not in tree
    assert "stray.txt" not in tree
    assert not any(b"root:" in content for content in tree.values())
    assert len(tree) <= 10


def test_inside_symlink_only_noticed(escape_run: dict[str, Any]) -> None:
    findings = _findings(escape_run["result"], "escaper")
    assert not any("out/inner-link" in paths for paths in findings.values())


def _sharing_manifest(project: Project, name: str, output: Path, files: int) -> Path:
    script = (
        f"mkdir -p {name} && for i in $(seq 1 {files}); do "
        f"printf '%s\\n' {name}-$i-$(head -c 600 /dev/zero | tr '\\0' x) > {name}/file-$i.txt; done; "
        f"echo from-{name} > common.txt; printf '## {name}\\n\\nsection of {name}\\n' > SUMMARY.md"
    )
    path = project.root / f"{name}.yaml"
    document = {
        "version": 1,
        "name": name,
        "source": str(project.source),
        "output": str(output),
        "agents": [{"name": "writer", "command": ["sh", "-c", script]}],
        "shared": [{"path": "SUMMARY.md", "mode": "append"}],
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_two_runs_share_one_output_tree(project: Project) -> None:
    output = project.root / "shared-tree"
    names = [f"{project.name}-a", f"{project.name}-b"]
    manifests = [_sharing_manifest(project, name, output, files=300) for name in names]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = [
        subprocess.Popen(
            [*ORCHESTRATE, "run", str(manifest), "--runs-dir", str(project.runs), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=project.root,
        )
        for manifest in manifests
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=180)
        results.append(run_result(stdout))

    tree = _tree(output)
    conflicts = [
        finding
        for result in results
        for agent in result["agents"]
        for finding in agent["publish_findings"]
        if finding["kind"] == "write-conflict"
    ]
    winners = {result["run_id"] for result in results if result["exit_code"] == 0}

    # Each run's own files arrive whole.
    for name in names:
        for index in range(1, 301):
            content = tree[f"{name}/file-{index}.txt"]
            assert content == f"{name}-{index}-{'x' * 600}\n".encode()
    # The common exclusive path has one owner, and the other run reports exactly one conflict.
    assert len(conflicts) == 1
    assert conflicts[0]["path"] == "common.txt"
    assert len(winners) == 1
    assert tree["common.txt"] in (b"from-" + name.encode() + b"\n" for name in names)
    # The append path contains each contribution exactly once, unbroken.
    summary = tree["SUMMARY.md"].decode()
    for name in names:
        assert summary.count(f"## {name}\n\nsection of {name}\n") == 1
    # The ledger's latest record of every path matches the file in the tree.
    latest: dict[str, dict[str, Any]] = {}
    for line in (output / ".orchestrate" / "ledger.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["action"] != "appended":
            latest[record["path"]] = record
    for path, content in tree.items():
        if path == "SUMMARY.md":
            continue
        assert latest[path]["sha256"] == hashlib.sha256(content).hexdigest(), path


def test_provenance_names_agent(project: Project) -> None:
    output = project.root / "prov-tree"
    manifest = project.manifest([{"name": "author", "command": ["sh", "-c", "echo hello > note.txt"]}],
                                output=str(output))
    code, result = project.run_json(manifest)

    completed = project.orchestrate("provenance", "note.txt", "--output", str(output), "--json")
    records = json.loads(completed.stdout)

    assert code == 0
    assert completed.returncode == 0
    assert records[0]["agent"] == "author"
    assert records[0]["run"] == result["run_id"]
    assert records[0]["sha256"] == hashlib.sha256(b"hello\n").hexdigest()


@pytest.fixture
def audited_run(project: Project) -> Path:
    manifest = project.manifest(
        [{"name": name, "command": ["sh", "-c", f"echo {name} > {name}.txt"]} for name in ("first", "second")],
        output=str(project.root / "audit-tree"),
    )
    code, result = project.run_json(manifest)
    assert code == 0, json.dumps(result, indent=2)
    return Path(result["run_dir"])


def _verify(project: Project, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return project.orchestrate("audit", "verify", str(run_dir))


def test_intact_audit_log_verifies(project: Project, audited_run: Path) -> None:
    completed = _verify(project, audited_run)
    kinds = [json.loads(line)["kind"] for line in (audited_run / "audit.jsonl").read_text().splitlines()]

    assert completed.returncode == 0, completed.stderr
    assert kinds[0] == "run-start"
    assert kinds[-1] == "run-end"
    assert "container-started" in kinds
    assert "publish" in kinds


def test_edited_audit_record_detected(project: Project, audited_run: Path) -> None:
    log = audited_run / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"agent":"', '"agent":"x', 1)
    log.write_text("".join(lines))

    completed = _verify(project, audited_run)

    assert completed.returncode == 1
    assert "line 4" in completed.stderr


def test_deleted_audit_record_detected(project: Project, audited_run: Path) -> None:
    log = audited_run / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    del lines[3]
    log.write_text("".join(lines))

    completed = _verify(project, audited_run)

    assert completed.returncode == 1
    assert "line 4" in completed.stderr


def test_reordered_audit_records_detected(project: Project, audited_run: Path) -> None:
    log = audited_run / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    log.write_text("".join(lines))

    completed = _verify(project, audited_run)

    assert completed.returncode == 1
    assert "line 3" in completed.stderr


def test_rewritten_audit_log_detected(project: Project, audited_run: Path) -> None:
    # Dropping the last record and nothing else keeps a valid chain; result.json's head catches it.
    log = audited_run / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))

    completed = _verify(project, audited_run)

    assert completed.returncode == 1


def test_audit_head_option_checked(project: Project, audited_run: Path) -> None:
    head = json.loads((audited_run / "result.json").read_text())["audit_head"]

    matching = project.orchestrate("audit", "verify", str(audited_run), "--head", head)
    wrong = project.orchestrate("audit", "verify", str(audited_run), "--head", "0" * 64)

    assert matching.returncode == 0, matching.stderr
    assert wrong.returncode == 1


def test_audit_log_without_anchor_rejected(project: Project, audited_run: Path) -> None:
    (audited_run / "result.json").unlink()

    completed = _verify(project, audited_run)

    assert completed.returncode == 1
    assert "--head" in completed.stderr


def test_audit_log_of_other_run_rejected(project: Project, audited_run: Path) -> None:
    impostor = audited_run.parent / f"{audited_run.name}-copy"
    impostor.mkdir()
    for name in ("audit.jsonl", "result.json"):
        (impostor / name).write_bytes((audited_run / name).read_bytes())

    completed = _verify(project, impostor)

    assert completed.returncode == 1
    assert "belongs to run" in completed.stderr
