"""Ctrl-C before a command's own handling starts ends with exit code 130 and one line, not a traceback."""

from __future__ import annotations

import pytest

from orchestrator import cli


def _interrupted() -> None:
    raise KeyboardInterrupt


def test_early_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "app", _interrupted)

    with pytest.raises(SystemExit) as stopped:
        cli.main()

    assert stopped.value.code == 130
    error = capsys.readouterr().err
    assert error == "orchestrate: interrupted\n"
    assert "Traceback" not in error
