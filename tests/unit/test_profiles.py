"""The profile files in agents/ and the loader's errors for broken ones."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import manifest as manifest_module
from orchestrator import profiles
from orchestrator.images import base_image_of
from orchestrator.profile_images import profile_images
from orchestrator.profiles import PROFILE_NAMES, ProfileError, list_profiles, load_profile

SHIPPED = {"claude-code", "copilot", "codex", "aider", "custom"}

VALID = """\
name: tool
description: a tool
image: tools/tool:1.0
command: [tool, --run, "{prompt}"]
prompt: {via: argument}
"""


@pytest.fixture
def profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A profiles folder holding copies of the shipped profiles; a test adds broken ones as tool.yaml."""
    folder = tmp_path / "agents"
    folder.mkdir()
    for path in profiles.PROFILES_DIR.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    names = frozenset({*SHIPPED, "tool"})
    monkeypatch.setattr(profiles, "PROFILES_DIR", folder)
    monkeypatch.setattr(profiles, "PROFILE_NAMES", names)
    monkeypatch.setattr(manifest_module, "PROFILE_NAMES", names)
    load_profile.cache_clear()
    yield folder
    load_profile.cache_clear()


def write_profile(folder: Path, text: str) -> None:
    (folder / "tool.yaml").write_text(text, encoding="utf-8")


def problem_text(error: ProfileError) -> str:
    return "\n".join(str(problem) for problem in error.problems)


def test_shipped_profiles_all_load() -> None:
    loaded = {profile.name for profile in list_profiles()}

    assert loaded == SHIPPED
    assert PROFILE_NAMES == SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED - {"custom"}))
def test_shipped_profile_keeps_keys_out(name: str) -> None:
    profile = load_profile(name)

    assert profile.network == "allowlist"
    assert profile.apis, "a profile with a model API names the secret the broker adds"
    for api in profile.apis:
        assert api.secret not in profile.env
    assert all(value != "" for value in profile.env.values())


@pytest.mark.parametrize("name", sorted(SHIPPED - {"custom"}))
def test_shipped_profile_image_is_built_here(name: str) -> None:
    profile = load_profile(name)
    image = profile_images()[name]

    assert profile.image == image.tag
    assert not image.tag.endswith(":latest")
    assert base_image_of(image.recipe) == "orchestrate/base:latest"


def test_copilot_withholds_github_tokens() -> None:
    profile = load_profile("copilot")

    assert {"COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN"} <= set(profile.forbidden_env)
    assert profile.env["COPILOT_OFFLINE"] == "true"
    assert any("GitHub token" in limit for limit in profile.limits)


def test_custom_profile_has_no_preset() -> None:
    profile = load_profile("custom")

    assert profile.image is None
    assert profile.command is None
    assert profile.network == "none"


def test_valid_test_profile_loads(profile_dir: Path) -> None:
    write_profile(profile_dir, VALID)

    profile = load_profile("tool")

    assert profile.command == ["tool", "--run", "{prompt}"]


BROKEN = [
    pytest.param(VALID + "colour: blue\n", "tool.yaml:6: colour: unknown field 'colour'", id="unknown-field"),
    pytest.param(VALID.replace("name: tool", "name: other"), "tool.yaml:1: name: is 'other' but the file is tool.yaml",
                 id="name-mismatch"),
    pytest.param(VALID.replace('image: tools/tool:1.0\n', ""), "needs both `image` and `command`",
                 id="image-missing"),
    pytest.param(VALID.replace('"{prompt}"', "task.md"), "prompt delivery via argument needs {prompt}",
                 id="argument-without-word"),
    pytest.param(VALID.replace('"{prompt}"', '"{model}"'), "command uses {model}", id="unknown-word"),
    pytest.param(VALID + "hosts: [api.example.com]\n", "invalid host 'api.example.com'", id="host-without-port"),
    pytest.param(VALID + "config_dirs: [/etc/tool]\n", "invalid config dir '/etc/tool'", id="config-outside-home"),
    pytest.param(VALID + "config_dirs: [/home/agent/../etc]\n", "invalid config dir", id="config-dotdot"),
    pytest.param(
        VALID + "apis:\n  - {name: m, upstream: 'https://m.example.com', base_url_env: M_URL, secret: M_KEY,"
        " header: x-key}\nenv: {M_KEY: value}\n",
        "env sets M_KEY, the name of a secret", id="env-sets-secret",
    ),
    pytest.param(VALID.replace("{via: argument}", "{via: env}"), "needs `variable`", id="env-without-variable"),
    pytest.param(VALID + "network: open\n", "tool.yaml:6: network: invalid value 'open'", id="bad-network"),
    pytest.param(VALID + "  - [\n", "tool.yaml:6", id="yaml-syntax"),
    pytest.param("- tool\n", "the top level must be a mapping", id="top-level-list"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_profile_rejected(profile_dir: Path, text: str, expected: str) -> None:
    write_profile(profile_dir, text)

    with pytest.raises(ProfileError) as caught:
        load_profile("tool")

    assert expected in problem_text(caught.value)


def test_broken_profile_named_by_listing(profile_dir: Path) -> None:
    write_profile(profile_dir, VALID + "colour: blue\n")

    with pytest.raises(ProfileError) as caught:
        list_profiles()

    assert "tool.yaml" in problem_text(caught.value)


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile("claude")

    assert "use one of: aider, claude-code, codex, copilot, custom" in problem_text(caught.value)
