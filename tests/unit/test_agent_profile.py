"""Manifest agents resolved against profiles: image, command, prompt delivery, errors and the plan's text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.agent_profile import MAX_ARGUMENT_PROMPT, PROMPT_TARGET, STDIN_WRAPPER
from orchestrator.errors import ManifestError, PlanError
from orchestrator.lifeline import WRAPPER_NAME
from orchestrator.manifest import DEFAULT_IMAGE, LoadedManifest
from orchestrator.plan import AgentPlan, HostFacts, RunPlan
from orchestrator.profiles import PLACEHOLDER_KEY
from orchestrator.render import plan_text
from orchestrator.workspace import prepare

from .conftest import FAKE_IMAGE_ID, RUN_ID, manifest_data

IMAGES = {
    DEFAULT_IMAGE: FAKE_IMAGE_ID,
    "orchestrate/claude-code:2.1.332": FAKE_IMAGE_ID,
    "orchestrate/codex:0.171.0": FAKE_IMAGE_ID,
    "orchestrate/copilot:1.0.102": FAKE_IMAGE_ID,
    "orchestrate/aider:0.86.2": FAKE_IMAGE_ID,
    "tools/mine:1": FAKE_IMAGE_ID,
}
LONG_PROMPT = "Review every module for error handling and write the findings to REVIEW.md. " * 4

PlanFor = Callable[..., RunPlan]


# The broker's keys must be set for a profile with network access to plan; these are not real keys.
KEYS = {"ANTHROPIC_API_KEY": "test-anthropic-key", "OPENAI_API_KEY": "test-openai-key"}


@pytest.fixture
def facts(make_facts: Callable[..., HostFacts]) -> HostFacts:
    return make_facts(images=dict(IMAGES), environment=dict(KEYS))


def plan_of(plan_for: PlanFor, facts: HostFacts, source: Path, *agents: dict[str, Any]) -> RunPlan:
    return plan_for(manifest_data(source, agents=list(agents)), facts=facts)


def agent_command(agent: AgentPlan) -> tuple[str, ...]:
    """Return the agent's own command, without the lifeline wrapper in front of it."""
    return agent.container.command


def mount_targets(agent: AgentPlan) -> dict[str, Any]:
    return {mount.target: mount for mount in agent.container.mounts}


def load_error(load_data: Callable[[dict[str, Any]], LoadedManifest], source: Path, *agents: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as caught:
        load_data(manifest_data(source, agents=list(agents)))
    return str(caught.value)


def test_profile_fills_image_and_command(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "claude-code", "prompt": "say hi"})
    agent = plan.agents[0]

    assert agent.container.image == "orchestrate/claude-code:2.1.332"
    assert agent_command(agent) == ("claude", "--print", "--dangerously-skip-permissions", "--output-format",
                                    "text", "say hi")
    assert agent.container.entrypoint[-1] == WRAPPER_NAME


def test_argument_prompt_stays_one_word(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    prompt = "it's $HOME and `id`\nline two"
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "claude-code", "prompt": prompt})

    assert agent_command(plan.agents[0])[-1] == prompt
    assert plan.agents[0].prompt_file is None


def test_profile_env_and_placeholder(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "claude-code", "prompt": "x"})
    env = plan.agents[0].container.fixed_env

    assert env["ANTHROPIC_API_KEY"] == PLACEHOLDER_KEY
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["HOME"] == "/home/agent"
    assert "ANTHROPIC_API_KEY" not in plan.agents[0].container.env_names


def test_config_dir_gets_own_tmpfs(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir,
                   {"name": "a", "profile": "claude-code", "prompt": "x", "resources": {"home": "16m"}})
    mount = mount_targets(plan.agents[0])["/home/agent/.claude"]

    assert mount.type == "tmpfs"
    assert not mount.read_only
    assert mount.size == 16 * 1024 * 1024


def test_stdin_prompt_fed_from_file(plan_for: PlanFor, facts: HostFacts, source_dir: Path, runs_root: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "codex", "prompt": "fix it"})
    agent = plan.agents[0]

    assert agent_command(agent)[: len(STDIN_WRAPPER)] == STDIN_WRAPPER
    assert agent_command(agent)[len(STDIN_WRAPPER)] == "codex"
    assert agent.prompt_file == runs_root / RUN_ID / "prompts" / "a.txt"
    mount = mount_targets(agent)[PROMPT_TARGET]
    assert mount.read_only
    assert mount.source == str(agent.prompt_file)


def test_file_prompt_word_replaced(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "aider", "prompt": "fix it"})
    command = agent_command(plan.agents[0])

    assert command[1:3] == ("--message-file", PROMPT_TARGET)
    assert PROMPT_TARGET in mount_targets(plan.agents[0])


def test_prompt_read_from_file(plan_for: PlanFor, facts: HostFacts, source_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "task.md").write_text("from a file\n", encoding="utf-8")

    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "aider", "prompt": {"file": "task.md"}})

    assert plan.agents[0].prompt == "from a file\n"


def test_prompt_written_for_container(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "aider", "prompt": "fix it"})

    prepare(plan)

    prompt_file = plan.agents[0].prompt_file
    assert prompt_file is not None
    assert prompt_file.read_text(encoding="utf-8") == "fix it"
    assert prompt_file.stat().st_mode & 0o777 == 0o444


def test_env_delivery_sets_variable(plan_for: PlanFor, facts: HostFacts, source_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import agent_profile
    from orchestrator.profiles import Profile, PromptDelivery

    profile = Profile(name="custom", description="env tool", image="tools/mine:1", command=["mine"],
                      prompt=PromptDelivery(via="env", variable="TASK"))
    monkeypatch.setattr(agent_profile, "load_profile", lambda name: profile)

    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "prompt": "do it"})

    assert plan.agents[0].container.fixed_env["TASK"] == "do it"
    assert agent_command(plan.agents[0]) == ("mine",)


def test_manifest_overrides_image_and_command(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {
        "name": "a", "profile": "claude-code", "image": "tools/mine:1", "prompt": "hi",
        "command": ["claude", "-p", "{prompt}", "--model", "opus"],
    })

    assert plan.agents[0].container.image == "tools/mine:1"
    assert agent_command(plan.agents[0]) == ("claude", "-p", "hi", "--model", "opus")


def test_custom_command_with_prompt_file(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir,
                   {"name": "a", "command": ["python3", "run.py", "--task={prompt_file}"], "prompt": "go"})

    assert agent_command(plan.agents[0]) == ("python3", "run.py", f"--task={PROMPT_TARGET}")
    assert plan.agents[0].container.image == DEFAULT_IMAGE


def test_profile_prompt_missing_rejected(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "profile": "claude-code"})

    assert "agents[0].prompt: profile claude-code needs a prompt" in message


def test_prompt_word_without_prompt_rejected(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "command": ["tool", "{prompt}"]})

    assert "agents[0].command: command uses {prompt} but the agent has no prompt" in message


def test_unused_prompt_rejected(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "command": ["tool"], "prompt": "lost"})

    assert "agents[0].prompt: the prompt never reaches the command 'tool'" in message


def test_custom_without_command_rejected(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a"})

    assert "agents[0].command: command is missing; profile custom gives none" in message


def test_unknown_profile_rejected(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "profile": "gemini", "prompt": "x"})

    assert "unknown profile 'gemini'; use one of: aider, claude-code, codex, copilot, custom" in message


@pytest.mark.parametrize("name", ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"])
def test_withheld_variable_rejected(load_data: Any, source_dir: Path, name: str) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "profile": "claude-code", "prompt": "x", "env": [name]})

    assert f"agents[0].env: {name} is" in message
    assert f"remove {name} from env" in message


def test_secret_in_env_names_broker(load_data: Any, source_dir: Path) -> None:
    message = load_error(load_data, source_dir, {"name": "a", "profile": "codex", "prompt": "x",
                                                 "env": ["OPENAI_API_KEY"]})

    assert "OPENAI_API_KEY is a secret of profile codex, which the egress broker adds" in message


def test_github_token_in_defaults_rejected(load_data: Any, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[{"name": "a", "profile": "copilot", "prompt": "x"}],
                         defaults={"env": ["GH_TOKEN"]})

    with pytest.raises(ManifestError) as caught:
        load_data(data)

    assert "defaults.env: GH_TOKEN is withheld by profile copilot" in str(caught.value)


def test_argument_prompt_too_long_rejected(load_data: Any, source_dir: Path) -> None:
    prompt = "x" * (MAX_ARGUMENT_PROMPT + 1)
    message = load_error(load_data, source_dir, {"name": "a", "profile": "claude-code", "prompt": prompt})

    assert "too long for one command-line argument" in message


def test_missing_prompt_file_rejected(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    with pytest.raises(PlanError) as caught:
        plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "aider", "prompt": {"file": "none.md"}})

    assert "agents[0].prompt.file: prompt file none.md" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_missing_profile_image_names_build(plan_for: PlanFor, make_facts: Callable[..., HostFacts],
                                           source_dir: Path) -> None:
    facts = make_facts(images={**IMAGES, "orchestrate/codex:0.171.0": None})

    with pytest.raises(PlanError) as caught:
        plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "codex", "prompt": "x"})

    assert "agents[0].profile: image orchestrate/codex:0.171.0 is not on this machine" in str(caught.value)
    assert "`orchestrate images build --profile codex`" in str(caught.value)


def test_plan_text_shows_profile(plan_for: PlanFor, facts: HostFacts, source_dir: Path) -> None:
    plan = plan_of(plan_for, facts, source_dir, {"name": "a", "profile": "claude-code", "prompt": LONG_PROMPT})

    text = plan_text(plan)

    assert LONG_PROMPT.strip() not in text
    assert "prompt    'Review every module for error handling and write the find...'" in text
    assert "'Review every module for error handlin...'" in text
    assert "the broker adds x-api-key from variable ANTHROPIC_API_KEY; placeholder in ANTHROPIC_API_KEY" in text
    assert "network orchestrate-demo-20240101-000000-abcdef--egress-a" in text
    assert "limit     Only API-key billing works." in text
    assert "/home/agent/.claude" in text


def test_agents_command_lists_profiles() -> None:
    result = CliRunner().invoke(cli.app, ["agents"])

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(rows) == {"aider", "claude-code", "codex", "copilot", "custom"}
    assert "ANTHROPIC_API_KEY" in rows["claude-code"]


def test_agents_json_names_secrets() -> None:
    import json

    result = CliRunner().invoke(cli.app, ["agents", "--json"])

    records = {record["name"]: record for record in json.loads(result.output)}
    assert records["codex"]["secrets"] == ["OPENAI_API_KEY"]
    assert records["custom"]["network"] == "none"


def test_claude_example_manifest_plans(make_facts: Callable[..., HostFacts], fake_home: Path,
                                       runs_root: Path) -> None:
    from orchestrator.manifest import load_manifest
    from orchestrator.plan import build_plan

    example = Path(__file__).resolve().parents[2] / "configs" / "claude-code.example.yaml"
    loaded = load_manifest(example)

    facts = make_facts(images=dict(IMAGES), cpu_count=2, environment=dict(KEYS))
    plan = build_plan(loaded, facts, runs_root=runs_root, run_id=RUN_ID)

    assert [agent.profile for agent in plan.agents] == ["claude-code", "claude-code"]
    assert plan.broker is not None
    assert all(agent.egress is not None for agent in plan.agents)
    reviewer = plan.agents[1]
    assert reviewer.prompt is not None
    assert reviewer.prompt.startswith("Review the error handling")
    assert agent_command(reviewer)[-1] == reviewer.prompt
