"""The command line against a real engine: plan rejections, plan output, the bundled example."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from .conftest import Project, run_result

REPOSITORY = Path(__file__).resolve().parents[2]


def _environment_with_home(home: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["HOME"] = str(home)
    environment.pop("SUDO_USER", None)
    environment["PYTHONPATH"] = str(REPOSITORY)
    return environment


@pytest.mark.parametrize("store", [".ssh", ".aws", ".docker", ".kube", ".gnupg", ".config/gcloud"])
def test_plan_rejects_credential_store(project: Project, store: str) -> None:
    home = project.root / "home"
    (home / store).mkdir(parents=True)
    manifest = project.manifest([{"name": "a", "command": ["true"]}], source=str(home / store))

    completed = project.orchestrate("plan", str(manifest), env=_environment_with_home(home))

    assert completed.returncode == 2
    assert f"{home / store}" in completed.stderr
    assert "credential store" in completed.stderr


def test_plan_rejects_docker_socket(project: Project) -> None:
    manifest = project.manifest([{"name": "a", "command": ["true"]}], source="/var/run/docker.sock")

    completed = project.orchestrate("plan", str(manifest))

    assert completed.returncode == 2
    assert "/var/run/docker.sock" in completed.stderr
    assert "socket" in completed.stderr


def test_plan_rejects_socket_inside_source(project: Project) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(project.source / "engine.sock"))
    try:
        manifest = project.manifest([{"name": "a", "command": ["true"]}])
        completed = project.orchestrate("plan", str(manifest))
    finally:
        listener.close()

    assert completed.returncode == 2
    assert "engine.sock is a Unix socket" in completed.stderr


def test_plan_rejects_missing_image(project: Project) -> None:
    manifest = project.manifest([{"name": "a", "command": ["true"], "image": "orchestrate/absent:never"}])

    completed = project.orchestrate("plan", str(manifest))

    assert completed.returncode == 2
    assert "orchestrate/absent:never" in completed.stderr
    assert "orchestrate images build" in completed.stderr


def test_plan_json_matches_run(project: Project) -> None:
    manifest = project.manifest([{"name": "a", "command": ["sh", "-c", "echo x > x.txt"]}])

    completed = project.orchestrate("plan", str(manifest), "--json", "--runs-dir", str(project.runs))
    plan = json.loads(completed.stdout)

    assert completed.returncode == 0, completed.stderr
    assert plan["agents"][0]["container"]["security"]["network_mode"] == "none"
    assert project.containers() == []
    assert not project.runs.exists()


def test_run_rejects_bad_manifest_with_exit_2(project: Project) -> None:
    manifest = project.root / "bad.yaml"
    manifest.write_text(
        "version: 1\nname: bad\nsource: src\nagents:\n  - name: a\n    command: [x]\n"
        "    resources:\n      memory: 4 gigs\n"
    )

    completed = project.orchestrate("run", str(manifest))

    assert completed.returncode == 2
    assert "bad.yaml:8: agents[0].resources.memory: invalid size '4 gigs'" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_example_manifest_runs(project: Project) -> None:
    # The example as shipped, except that its output goes to the test's own folder, not the checkout's.
    example = yaml.safe_load((REPOSITORY / "configs" / "agents.example.yaml").read_text(encoding="utf-8"))
    example["source"] = str(REPOSITORY)
    example["output"] = str(project.root / "generated")
    manifest = project.root / "example.yaml"
    manifest.write_text(yaml.safe_dump(example), encoding="utf-8")

    completed = project.orchestrate("run", str(manifest), "--runs-dir", str(project.runs), "--json")
    result = run_result(completed.stdout)

    assert completed.returncode == 0, completed.stderr
    assert [agent["state"] for agent in result["agents"]] == ["succeeded"] * 3
    workspaces = {agent["name"]: Path(agent["workspace"]) for agent in result["agents"]}
    assert (workspaces["api-reference"] / "api" / "index.md").is_file()
    assert (workspaces["test-gaps"] / "test-gaps" / "report.json").is_file()
    assert (workspaces["static-check"] / "static-check" / "report.md").is_file()
    report = json.loads((workspaces["static-check"] / "static-check" / "report.json").read_text())
    checked = {item["path"] for item in report["files"]}
    assert "orchestrator/cli.py" in checked
    summary = (project.root / "generated" / "SUMMARY.md").read_text()
    assert summary.count("## ") == 3
