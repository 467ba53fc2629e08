"""The shipped seccomp profile: generated from its groups, an allowlist, and without the denied calls."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.errors import EnvironmentProblem
from orchestrator.seccomp import NEVER_ALLOWED, PROFILE_PATH, check_profile, load_profile, option_sha256

GENERATOR = PROFILE_PATH.with_name("generate.py")


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seccomp_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def allowed_names(document: dict) -> set[str]:
    return {name for rule in document["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for name in rule["names"]}


def test_profile_matches_generator() -> None:
    assert PROFILE_PATH.read_text(encoding="utf-8") == generator().profile_text()


def test_profile_denies_by_default() -> None:
    document = json.loads(PROFILE_PATH.read_text(encoding="utf-8"))

    assert document["defaultAction"] == "SCMP_ACT_ERRNO"


@pytest.mark.parametrize("name", sorted(NEVER_ALLOWED))
def test_profile_leaves_out(name: str) -> None:
    document = json.loads(PROFILE_PATH.read_text(encoding="utf-8"))

    assert name not in allowed_names(document)


def test_socket_filters_vsock() -> None:
    document = json.loads(PROFILE_PATH.read_text(encoding="utf-8"))
    rules = [rule for rule in document["syscalls"] if rule["names"] == ["socket"]]

    assert len(rules) == 1
    assert rules[0]["args"] == [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]


def test_clone_filters_namespace_flags() -> None:
    document = json.loads(PROFILE_PATH.read_text(encoding="utf-8"))
    rules = [rule for rule in document["syscalls"] if rule["names"] == ["clone"]]

    assert rules[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    # CLONE_NEWUSER and CLONE_NEWNS are in the mask.
    assert rules[0]["args"][0]["value"] & 0x10000000
    assert rules[0]["args"][0]["value"] & 0x00020000


def test_check_rejects_allow_all() -> None:
    assert "defaultAction" in (check_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}) or "")


def test_check_rejects_forbidden_call() -> None:
    rule = {"names": ["read", "ptrace"], "action": "SCMP_ACT_ALLOW"}
    document = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule]}

    assert "ptrace" in (check_profile(document) or "")


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    broken = tmp_path / "agent.json"
    broken.write_text("{", encoding="utf-8")

    with pytest.raises(EnvironmentProblem, match="not valid JSON"):
        load_profile(broken)


def test_load_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="generate.py"):
        load_profile(tmp_path / "absent.json")


def test_option_sha256_matches_profile() -> None:
    profile = load_profile()

    assert option_sha256(["no-new-privileges:true", profile.option]) == profile.sha256
    assert option_sha256(["no-new-privileges:true"]) is None
