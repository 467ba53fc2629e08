"""`orchestrate shell`'s manifest, the plan of an interactive agent, and the shell's exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import InputError, ManifestError, PlanError, Problem
from orchestrator.interactive import KEEPER_NAME, SESSION_NAME, SHELL_COMMAND, session_program
from orchestrator.plan import RunPlan
from orchestrator.render import plan_text
from orchestrator.shell import (
    ShellRequest,
    for_shell_options,
    prepare_shell_manifest,
    shell_banner,
    shell_exit_code,
)

from .conftest import agent, manifest_data, write_manifest_data


def test_default_shell_reads_the_current_folder(tmp_path: Path, source_dir: Path) -> None:
    loaded, run_id = prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs"), cwd=source_dir)
    manifest = loaded.manifest
    assert run_id.startswith("shell-")
    assert loaded.path == tmp_path / "runs" / run_id / "shell.yaml"
    assert manifest.source.path == str(source_dir)
    assert manifest.output == str(source_dir / "generated")
    [shell] = manifest.agents
    assert shell.interactive
    assert tuple(shell.command) == SHELL_COMMAND
    assert shell.profile == "custom"
    assert shell.timeout == 8 * 3600


def test_shell_command_and_source_options(tmp_path: Path, source_dir: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    request = ShellRequest(runs_dir=tmp_path / "runs", command=("python3", "-q"), source=other, timeout="10m")
    loaded, _run_id = prepare_shell_manifest(request, cwd=source_dir)
    assert loaded.manifest.source.path == str(other)
    assert loaded.manifest.agents[0].command == ["python3", "-q"]
    assert loaded.manifest.agents[0].timeout == 600


def test_shell_takes_one_agent_of_a_manifest(tmp_path: Path, source_dir: Path) -> None:
    data = manifest_data("project", output="out", agents=[
        agent("first"), agent("second", env=[], resources={"memory": "256m"}, timeout="5m"),
    ])
    path = write_manifest_data(source_dir.parent, data)
    request = ShellRequest(runs_dir=tmp_path / "runs", manifest=path, agent="second")
    loaded, run_id = prepare_shell_manifest(request, cwd=tmp_path)
    assert run_id.startswith("demo-")
    [second] = loaded.manifest.agents
    assert second.name == "second"
    assert second.interactive
    assert tuple(second.command) == SHELL_COMMAND
    assert second.resources.memory == 256 * 1024**2
    assert second.timeout == 300
    # Relative paths were resolved against the original manifest's folder, not the run folder.
    assert loaded.manifest.source.path == str(source_dir)
    assert loaded.manifest.output == str(source_dir.parent / "out")


def test_shell_rejects_unknown_agent(tmp_path: Path, source_dir: Path) -> None:
    path = write_manifest_data(source_dir.parent, manifest_data("project"))
    with pytest.raises(InputError, match="has no agent 'ghost'; its agents are: reader"):
        prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs", manifest=path, agent="ghost"), cwd=tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"agent": "reader"}, "give --manifest and --agent together"),
        ({"profile": "no-such-cli"}, "unknown profile 'no-such-cli' for --profile"),
    ],
)
def test_shell_rejects_bad_options(tmp_path: Path, source_dir: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs", **fields), cwd=source_dir)
    assert not (tmp_path / "runs").exists()


def test_custom_profile_is_the_default(tmp_path: Path, source_dir: Path) -> None:
    loaded, _run_id = prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs", profile="custom"), cwd=source_dir)
    assert loaded.manifest.agents[0].profile == "custom"


def test_written_manifest_is_plain_yaml(tmp_path: Path, source_dir: Path) -> None:
    loaded, _run_id = prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs"), cwd=source_dir)
    document = yaml.safe_load(loaded.path.read_text(encoding="utf-8"))
    assert document["agents"][0]["interactive"] is True


def test_interactive_agent_runs_a_keeper_and_a_session(
    plan_for: Callable[..., RunPlan], source_dir: Path
) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[agent("chat", interactive=True), agent("batch")]))
    chat, batch = plan.agents
    assert batch.session_command is None
    assert chat.session_command is not None
    assert KEEPER_NAME in chat.container.command
    assert "python3" not in chat.container.command
    # The session wraps exactly what a batch agent would run.
    assert chat.session_command[3] == SESSION_NAME
    assert session_program(chat.session_command) == batch.container.command
    assert chat.container.security == batch.container.security
    assert chat.container.user == batch.container.user


def test_plan_text_shows_interactive_program(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    text = plan_text(plan_for(manifest_data(source_dir, agents=[agent("chat", interactive=True)])))
    assert "command   python3 app.py (interactive: in a terminal" in text


@pytest.mark.parametrize(
    ("run_exit", "agent_exit", "state", "expected"),
    [
        (0, 0, "succeeded", 0),
        (1, 7, "failed", 7),
        (3, 0, "succeeded", 3),
        (130, None, "interrupted", 130),
        (1, None, "error", 1),
        (1, 137, "timed-out", 1),
    ],
)
def test_shell_exit_code(run_exit: int, agent_exit: int | None, state: str, expected: int) -> None:
    assert shell_exit_code(run_exit, agent_exit, state) == expected


def test_invalid_timeout_leaves_no_run_folder(tmp_path: Path, source_dir: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(ManifestError, match="timeout"):
        prepare_shell_manifest(ShellRequest(runs_dir=runs, timeout="soon"), cwd=source_dir)
    assert list(runs.iterdir()) == []


def test_runs_dir_that_is_a_file_is_input_error(tmp_path: Path, source_dir: Path) -> None:
    runs = tmp_path / "runs"
    runs.write_text("not a folder\n", encoding="utf-8")
    with pytest.raises(InputError, match="cannot create the run folder"):
        prepare_shell_manifest(ShellRequest(runs_dir=runs), cwd=source_dir)


def test_source_mapping_keeps_its_fields(tmp_path: Path, source_dir: Path) -> None:
    data = {**manifest_data("project"), "source": {"path": "project", "mode": "read-only"}}
    path = write_manifest_data(source_dir.parent, data)
    request = ShellRequest(runs_dir=tmp_path / "runs", manifest=path, agent="reader")
    loaded, _run_id = prepare_shell_manifest(request, cwd=tmp_path)
    assert loaded.manifest.source.path == str(source_dir)
    assert loaded.manifest.source.mode == "read-only"


def test_shell_of_profile_agent_drops_prompt(tmp_path: Path, source_dir: Path) -> None:
    # A CLI profile requires a prompt, but the shell's command does not use it.
    data = manifest_data("project", agents=[{"name": "writer", "profile": "claude-code", "prompt": "Write docs."}])
    path = write_manifest_data(source_dir.parent, data)
    request = ShellRequest(runs_dir=tmp_path / "runs", manifest=path, agent="writer")
    loaded, _run_id = prepare_shell_manifest(request, cwd=tmp_path)
    [writer] = loaded.manifest.agents
    assert writer.profile == "claude-code"
    assert writer.prompt is None
    assert tuple(writer.command) == SHELL_COMMAND


def test_shell_command_keeps_prompt_it_names(tmp_path: Path, source_dir: Path) -> None:
    data = manifest_data("project", agents=[{"name": "writer", "profile": "claude-code", "prompt": "Write docs."}])
    path = write_manifest_data(source_dir.parent, data)
    request = ShellRequest(runs_dir=tmp_path / "runs", manifest=path, agent="writer", command=("claude", "{prompt}"))
    loaded, _run_id = prepare_shell_manifest(request, cwd=tmp_path)
    [writer] = loaded.manifest.agents
    assert writer.prompt == "Write docs."
    assert writer.command == ["claude", "{prompt}"]


def test_shell_error_names_option_not_file(tmp_path: Path, source_dir: Path) -> None:
    # The written manifest is deleted when it fails, so an error must not send the user to it.
    with pytest.raises(ManifestError) as caught:
        prepare_shell_manifest(ShellRequest(runs_dir=tmp_path / "runs", timeout="soon"), cwd=source_dir)
    message = str(caught.value)
    assert message.startswith("orchestrate shell: --timeout: ")
    assert "shell.yaml" not in message


def test_shell_plan_error_names_profile(tmp_path: Path) -> None:
    written = tmp_path / "runs" / "shell-1" / "shell.yaml"
    error = PlanError([Problem(str(written), 7, "agents[0]", "secret ANTHROPIC_API_KEY ... is not set", "x")])
    request = ShellRequest(runs_dir=tmp_path / "runs", profile="claude-code")
    relabeled = for_shell_options(error, request, written)
    assert isinstance(relabeled, PlanError)
    assert str(relabeled) == "orchestrate shell --profile claude-code: secret ANTHROPIC_API_KEY ... is not set"
    assert relabeled.problems[0].cause == "x"


def test_shell_error_names_user_manifest(tmp_path: Path) -> None:
    written = tmp_path / "runs" / "shell-1" / "shell.yaml"
    error = PlanError([Problem(str(written), 7, "agents[0].env", "broken")])
    request = ShellRequest(runs_dir=tmp_path / "runs", manifest=tmp_path / "agents.yaml", agent="writer")
    relabeled = for_shell_options(error, request, written)
    assert str(relabeled) == f"{tmp_path / 'agents.yaml'}: agent writer.env: broken"


def test_shell_banner_read_only_source(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[agent("shell", interactive=True)]))
    banner = shell_banner(plan)
    assert banner.startswith(f"{plan.source} is read-only at /workspace/src;")
    assert banner.endswith("the shell starts in /workspace/output")


def test_shell_banner_private_copy(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    data = {**manifest_data(source_dir, agents=[agent("shell", interactive=True, workdir="/workspace/src")]),
            "source": {"path": str(source_dir), "mode": "copy"}}
    banner = shell_banner(plan_for(data))
    assert banner.startswith(f"a private writable copy of {source_dir} is at /workspace/src;")
    assert "read-only" not in banner
    assert banner.endswith("the shell starts in /workspace/src")
