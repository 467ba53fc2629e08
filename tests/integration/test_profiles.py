"""Agent profiles against the real engine: each template runs the stand-in CLI, the prompt file and state tmpfs."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from .conftest import Project, agent_workspace
from .mock_upstream import MOCK_PORT, MockUpstream

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


API_OF_PROFILE = {"claude-code": "anthropic", "copilot": "openai", "codex": "openai", "aider": "anthropic"}


def test_each_profile_template_runs_standin(project: Project, standin_image: str, mock_upstream: MockUpstream) -> None:
    # Each stand-in reads its prompt, calls its base URL with the placeholder key and writes a file. The broker
    # adds the real key and sends the call to the test's mock API instead of the real one.
    keys = {
        "ANTHROPIC_API_KEY": f"sk-ant-test-{secrets.token_hex(8)}",
        "OPENAI_API_KEY": f"sk-test-{secrets.token_hex(8)}",
    }
    mock = f"{mock_upstream.allowed}:{MOCK_PORT}"
    agents = [
        {"name": cli, "profile": profile, "image": standin_image, "prompt": f"{PROMPT} ({cli})",
         "apis": {API_OF_PROFILE[profile]: {"upstream": f"http://{mock}/{cli}"}},
         "egress": {"allow_private": [mock]}}
        for profile, cli in CLI_OF_PROFILE.items()
    ]
    manifest = project.manifest(agents, defaults={"timeout": "60s"},
                                broker={"upstream_network": "internal", "upstream_network_name": mock_upstream.network})
    environment = {**os.environ, **keys, "PYTHONPATH": str(REPOSITORY)}

    code, result = project.run_json(manifest, "--no-live", env=environment)

    assert code == 0, json.dumps(result, indent=2)
    received = {request["path"].split("/")[1]: request for request in mock_upstream.requests_seen(
        mock_upstream.containers[0]) if request["path"].split("/")[1] in CLI_OF_PROFILE.values()}
    for profile, cli in CLI_OF_PROFILE.items():
        record = json.loads((agent_workspace(result, cli) / f"standin-{cli}.json").read_text(encoding="utf-8"))
        assert record["prompt"] == f"{PROMPT} ({cli})", cli
        assert record["status"] == 200, record
        assert "mock-allowed part 2" in record["response"], cli
        headers = {name.lower(): value for name, value in received[cli]["headers"].items()}
        if API_OF_PROFILE[profile] == "anthropic":
            assert headers["x-api-key"] == keys["ANTHROPIC_API_KEY"], cli
        else:
            assert headers["authorization"] == f"Bearer {keys['OPENAI_API_KEY']}", cli
        for value in keys.values():
            assert value not in json.dumps(record), f"{cli} saw a key"


def test_profile_plan_routes_through_broker(project: Project, standin_image: str) -> None:
    agents = [{"name": "claude", "profile": "claude-code", "image": standin_image, "prompt": "hello"},
              {"name": "offline", "profile": "claude-code", "image": standin_image, "prompt": "hello",
               "network": "none"}]
    manifest = project.manifest(agents)
    environment = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-plan-only", "PYTHONPATH": str(REPOSITORY)}

    completed = project.orchestrate("plan", str(manifest), "--runs-dir", str(project.runs), "--json",
                                    env=environment)

    assert completed.returncode == 0, completed.stderr
    assert "sk-ant-plan-only" not in completed.stdout
    plan = json.loads(completed.stdout)
    claude, offline = plan["agents"]
    assert claude["container"]["security"]["network_mode"] == claude["egress"]["network"]
    assert claude["container"]["fixed_env"]["ANTHROPIC_BASE_URL"] == "http://orchestrate-broker:3128/anthropic"
    assert "ANTHROPIC_API_KEY" not in claude["container"]["env_names"]
    assert claude["container"]["fixed_env"]["ANTHROPIC_API_KEY"] == "orchestrate-placeholder-key"
    assert offline["container"]["security"]["network_mode"] == "none"
    assert offline["egress"] is None


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
        # The prompt file and the state tmpfs are the subject here; gVisor with a network needs runsc-network.
        "network": "none",
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
    # The broker's upstream network is internal and empty: these agents make no model request.
    manifest = project.manifest(agents, broker={"upstream_network": "internal"})
    environment = {**os.environ, **keys, "PYTHONPATH": str(REPOSITORY)}

    code, result = project.run_json(manifest, "--no-live", env=environment)

    assert code == 0, json.dumps(result, indent=2)
    for name in ("claude", "copilot", "codex"):
        environs = json.loads((agent_workspace(result, name) / f"environ-{name}.json").read_text(encoding="utf-8"))
        assert any("orchestrate-placeholder-key" in text for text in environs), f"{name} read no placeholder"
        for key, value in keys.items():
            assert not any(value in text for text in environs), f"{key} reached agent {name}"
