"""Unit tests of reading a broker secret at run start: what a bad value gets instead of a broken broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.egress import BrokerStartError, read_secret
from orchestrator.egress_models import SecretPlan

KEY = SecretPlan(name="ANTHROPIC_API_KEY", env="TEAM_KEY")


def test_secret_read_and_stripped() -> None:
    assert read_secret(KEY, {"TEAM_KEY": " sk-abc\n"}) == "sk-abc"


@pytest.mark.parametrize(("value", "message"), [
    ("", "is empty"),
    ("sk-a\x7fb", "control character"),
    ("sk-a\rb", "control character"),
    ("sk-\u20ac-key", "non-ASCII character"),
])
def test_bad_secret_value_rejected(value: str, message: str) -> None:
    with pytest.raises(BrokerStartError, match=message) as caught:
        read_secret(KEY, {"TEAM_KEY": value})

    assert "variable TEAM_KEY" in str(caught.value)
    assert value.strip() == "" or value not in str(caught.value)


def test_unreadable_secret_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "key"

    with pytest.raises(BrokerStartError, match=f"the file {missing} for secret ANTHROPIC_API_KEY cannot be read"):
        read_secret(SecretPlan(name="ANTHROPIC_API_KEY", file=missing), {})
