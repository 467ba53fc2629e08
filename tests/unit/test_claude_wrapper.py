"""The claude-code image's `claude` wrapper, run on the host with a stand-in for the real program."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

WRAPPER = Path(__file__).resolve().parents[2] / "sandbox_images" / "claude-code" / "claude"
REAL_PROGRAM = "/opt/claude/bin/claude"


def run_wrapper(tmp_path: Path, config_dir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a copy of the wrapper whose real program prints its arguments."""
    stand_in = tmp_path / "real-claude"
    stand_in.write_text('#!/bin/sh\necho "args: $*"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    wrapper = tmp_path / "claude"
    wrapper.write_text(WRAPPER.read_text(encoding="utf-8").replace(REAL_PROGRAM, str(stand_in)), encoding="utf-8")
    wrapper.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    if config_dir is not None:
        env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    return subprocess.run([str(wrapper), *args], env=env, capture_output=True, text=True, check=False)


def test_wrapper_names_real_program() -> None:
    assert f"exec {REAL_PROGRAM} " in WRAPPER.read_text(encoding="utf-8")


def test_wrapper_marks_setup_done(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()

    result = run_wrapper(tmp_path, config_dir, "--print", "two words")

    assert result.returncode == 0
    assert result.stdout == "args: --print two words\n"
    settings = json.loads((config_dir / ".claude.json").read_text(encoding="utf-8"))
    assert settings == {"hasCompletedOnboarding": True}


def test_wrapper_keeps_existing_settings(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / ".claude.json").write_text('{"theme": "dark"}\n', encoding="utf-8")

    result = run_wrapper(tmp_path, config_dir, "--version")

    assert result.returncode == 0
    assert (config_dir / ".claude.json").read_text(encoding="utf-8") == '{"theme": "dark"}\n'


def test_wrapper_starts_without_writable_config(tmp_path: Path) -> None:
    result = run_wrapper(tmp_path, tmp_path / "missing", "--version")

    assert result.returncode == 0
    assert result.stdout == "args: --version\n"
    assert result.stderr == ""


def test_wrapper_without_config_dir_writes_nothing(tmp_path: Path) -> None:
    result = run_wrapper(tmp_path, None, "--version")

    assert result.returncode == 0
    assert not list(tmp_path.glob("**/.claude.json"))
