"""Agent profiles against the real engine: each template runs the stand-in CLI, the prompt file and state tmpfs."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from .conftest import Project, agent_workspace

# Quotes, a variable, a command substitution and a second line: none of it may reach a shell.
PROMPT = "Fix 'quotes' in $HOME and `id`;\nthen write the summary"
REPOSITORY = Path(__file__).resolve().parents[2]
CLI_OF_PROFILE = {"claude-code": "claude", "copilot": "copilot", "codex": "codex", "aider": "aider"}

INSPECT_SCRIPT = r"""
import json, os, stat, sys
prompt_path = sys.argv[1]
report = {"prompt_path": prompt_path, "prompt": open(prompt_path, encoding="utf-8").read()}
try:
    open(prompt_path, "a").close()
    report["prompt_write"] = "allowed"
except OSError as exc:
    report["prompt_write"] = exc.strerror
for line in open("/proc/self/mountinfo", encoding="utf-8"):
    fields = line.split()
    if fields[4] == "/home/agent/.claude":
        after = fields[fields.index("-") + 1:]
        report["config_fs"] = after[0]
        report["config_options"] = fields[5] + "," + after[2]
info = os.stat("/home/agent/.claude")
report["config_owner"] = info.st_uid
report["config_mode"] = oct(stat.S_IMODE(info.st_mode))
open("/home/agent/.claude/settings.json", "w").write("{}")
vfs = os.statvfs("/home/agent/.claude")
report["config_bytes"] = vfs.f_blocks * vfs.f_frsize
report["uid"] = os.getuid()
json.dump(report, open("report.json", "w"))
"""


def test_each_profile_template_runs_standin(project: Project, standin_image: str) -> None:
    agents = [
        {"name": cli, "profile": profile, "image": standin_image, "prompt": f"{PROMPT} ({cli})"}
        for profile, cli in CLI_OF_PROFILE.items()
    ]
    manifest = project.manifest(agents, defaults={"timeout": "60s"})

    code, result = project.run_json(manifest, "--no-live")

    assert code == 0, json.dumps(result, indent=2)
    for cli in CLI_OF_PROFILE.values():
        record = json.loads((agent_workspace(result, cli) / f"standin-{cli}.json").read_text(encoding="utf-8"))
        assert record["prompt"] == f"{PROMPT} ({cli})", cli
        assert record["api"] is None, cli
        assert record["reason"].endswith("is unset"), cli


def test_container_of_profile_has_no_network(project: Project, standin_image: str) -> None:
    agents = [{"name": "claude", "profile": "claude-code", "image": standin_image, "prompt": "hello"}]
    manifest = project.manifest(agents)

    completed = project.orchestrate("plan", str(manifest), "--runs-dir", str(project.runs), "--json")

    assert completed.returncode == 0, completed.stderr
    plan = json.loads(completed.stdout)
    agent = plan["agents"][0]
    assert agent["container"]["security"]["network_mode"] == "none"
    assert agent["needs"]["network"] == "allowlist"
    assert "ANTHROPIC_API_KEY" not in agent["container"]["env_names"]
    assert agent["container"]["fixed_env"]["ANTHROPIC_API_KEY"] == "orchestrate-placeholder-key"


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_prompt_file_and_config_tmpfs(project: Project, standin_image: str, isolation: str) -> None:
    agents = [{
        "name": "inspector",
        "profile": "claude-code",
        "image": standin_image,
        "isolation": isolation,
        "prompt": PROMPT,
        "command": ["python3", "-c", INSPECT_SCRIPT, "{prompt_file}"],
        "resources": {"home": "32m", "pids": 256},
    }]
    manifest = project.manifest(agents, defaults={"timeout": "60s"})

    code, result = project.run_json(manifest, "--no-live")

    assert code == 0, json.dumps(result, indent=2)
    report = json.loads((agent_workspace(result, "inspector") / "report.json").read_text(encoding="utf-8"))
    assert report["prompt_path"] == "/run/orchestrate/prompt.txt"
    assert report["prompt"] == PROMPT
    assert report["prompt_write"] in ("Read-only file system", "Permission denied")
    assert report["config_fs"] == "tmpfs"
    assert report["config_owner"] == report["uid"]
    assert report["config_mode"] == "0o700"
    assert report["config_bytes"] == 32 * 1024 * 1024
    assert "noexec" in report["config_options"].split(",")


ENVIRONMENT_SCRIPT = r"""
import glob, json, os
seen = []
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        seen.append(open(path, "rb").read().decode(errors="replace"))
    except OSError:
        pass
json.dump(seen, open("environ-" + os.environ["ORCHESTRATE_AGENT"] + ".json", "w"))
"""


def test_host_keys_never_reach_agent(project: Project, standin_image: str) -> None:
    keys = {
        "ANTHROPIC_API_KEY": f"sk-ant-test-{secrets.token_hex(8)}",
        "OPENAI_API_KEY": f"sk-test-{secrets.token_hex(8)}",
        "GH_TOKEN": f"ghp_test{secrets.token_hex(8)}",
    }
    agents = [
        {"name": name, "profile": profile, "image": standin_image, "prompt": "x",
         "command": ["python3", "-c", ENVIRONMENT_SCRIPT, "{prompt}"]}
        for name, profile in (("claude", "claude-code"), ("copilot", "copilot"), ("codex", "codex"))
    ]
    manifest = project.manifest(agents)
    environment = {**os.environ, **keys, "PYTHONPATH": str(REPOSITORY)}

    code, result = project.run_json(manifest, "--no-live", env=environment)

    assert code == 0, json.dumps(result, indent=2)
    for name in ("claude", "copilot", "codex"):
        environs = json.loads((agent_workspace(result, name) / f"environ-{name}.json").read_text(encoding="utf-8"))
        assert any("orchestrate-placeholder-key" in text for text in environs), f"{name} read no placeholder"
        for key, value in keys.items():
            assert not any(value in text for text in environs), f"{key} reached agent {name}"
