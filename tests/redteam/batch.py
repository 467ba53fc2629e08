"""Run the scenarios of one batch as agents of one `orchestrate run`, and read back what happened.

Every agent claims its own folder, and every violation kind is set to `warn`,
so one detected attack does not stop the other agents of its run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .scenarios import SCENARIOS, Scenario

ORCHESTRATE = [sys.executable, "-m", "orchestrator"]
KINDS = ("write-conflict", "claim-violation", "escape-attempt", "quota-exceeded", "tampering", "posture-drift",
         "monitor-failure")
# The grace period between SIGTERM and SIGKILL for an agent over its timeout.
GRACE_SECONDS = "1"
BATCH_TIMEOUT = 240


@dataclass
class BatchRun:
    """One batch's `orchestrate run`: its manifest, process and, once finished, its outcome."""

    batch: str
    runtime: str
    manifest: Path
    runs_dir: Path
    process: subprocess.Popen[str]
    started: float
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.result.get("run_id", ""))

    @property
    def run_dir(self) -> Path:
        return Path(self.result["run_dir"])

    def agent(self, name: str) -> dict[str, Any]:
        for item in self.result.get("agents", []):
            if item["name"] == name:
                return dict(item)
        raise AssertionError(f"agent {name} is not in the result of the {self.batch} batch:\n{self.stderr[-3000:]}")

    def verdict(self, name: str) -> dict[str, Any] | None:
        path = Path(self.agent(name)["workspace"]) / name / "verdict.json"
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    def violations(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record["kind"] == "violation" and record.get("agent") == name]

    def outcome(self, name: str) -> set[str]:
        """Return the outcome tokens seen for one agent (see scenarios.py)."""
        tokens = {f"state:{self.agent(name)['state']}"}
        verdict = self.verdict(name)
        if verdict is None:
            tokens.add("no-verdict")
        else:
            tokens.add("succeeded" if verdict["succeeded"] else "blocked")
        for record in self.violations(name):
            prefix = "detected" if "action" in record else "finding"
            tokens.add(f"{prefix}:{record['violation']}")
        return tokens


def write_manifest(root: Path, *, name: str, batch: str, runtime: str, source: Path, output: Path) -> Path:
    agents = []
    for scenario in SCENARIOS:
        if scenario.batch != batch:
            continue
        agents.append(_agent_entry(scenario))
    defaults: dict[str, Any] = {"timeout": "90s", "resources": {"cpus": 1, "memory": "512m", "pids": 128}}
    if runtime == "runsc":
        defaults["isolation"] = "gvisor"
    document = {
        "version": 1,
        "name": name,
        "source": str(source),
        "output": str(output),
        "defaults": defaults,
        "agents": agents,
        "policy": dict.fromkeys(KINDS, "warn"),
        "monitor": {"posture_interval": "2s", "rescan_interval": "2s"},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _agent_entry(scenario: Scenario) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": scenario.name,
        "command": ["python3", "/workspace/src/attack.py", scenario.name],
        "writes": [f"{scenario.name}/**"],
    }
    for key, value in scenario.agent.items():
        if key == "resources":
            entry["resources"] = {**entry.get("resources", {}), **value}
        else:
            entry[key] = value
    return entry


def start_batch(manifest: Path, *, batch: str, runtime: str, runs_dir: Path, cwd: Path,
                environment: dict[str, str]) -> BatchRun:
    command = [*ORCHESTRATE, "run", str(manifest), "--runs-dir", str(runs_dir), "--json", "--grace", GRACE_SECONDS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment, cwd=cwd)
    return BatchRun(batch=batch, runtime=runtime, manifest=manifest, runs_dir=runs_dir, process=process,
                    started=time.monotonic())


def finish_batch(run: BatchRun) -> BatchRun:
    """Wait for the batch's run and read its result and audit log; fail with its output when it has none."""
    try:
        run.stdout, run.stderr = run.process.communicate(timeout=BATCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        run.process.kill()
        run.stdout, run.stderr = run.process.communicate()
        message = f"the {run.batch} batch on {run.runtime} ran past {BATCH_TIMEOUT} s:\n{run.stderr[-3000:]}"
        raise AssertionError(message) from None
    run.exit_code = run.process.returncode
    try:
        run.result = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"the {run.batch} batch on {run.runtime} printed no result (exit {run.exit_code}):\n"
            f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        ) from None
    if "run_dir" not in run.result:
        raise AssertionError(
            f"the {run.batch} batch on {run.runtime} did not run (exit {run.exit_code}):\n{run.stderr[-3000:]}"
        )
    lines = (run.run_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    run.records = [json.loads(line) for line in lines]
    return run
