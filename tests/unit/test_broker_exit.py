"""How the run judges its egress broker's exit: a failure while it runs, the user's doing while it is stopped."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from orchestrator.supervisor import Supervisor
from orchestrator.violations import BROKER_FAILURE


def supervisor_state(run_dir: Path, interrupted_by: str | None = None) -> Any:
    """Return the part of a Supervisor that `_on_broker_exit` reads, recording its violations and audit records."""
    state = SimpleNamespace(plan=SimpleNamespace(run_dir=run_dir), interrupted_by=interrupted_by,
                            violations=[], audited=[])
    state._on_violation = state.violations.append
    state._audit = lambda kind, **fields: state.audited.append((kind, fields))
    return state


def test_broker_exit_while_running_is_violation(tmp_path: Path) -> None:
    state = supervisor_state(tmp_path)

    Supervisor._on_broker_exit(state, "the egress broker exited")

    assert [(item.kind, item.agent, item.detail) for item in state.violations] == [
        (BROKER_FAILURE, "*", "the egress broker exited")
    ]


def test_broker_exit_after_stop_request_no_violation(tmp_path: Path) -> None:
    # `orchestrate stop` writes its request, then kills the containers of a run process that does not end in time.
    (tmp_path / "stop-request.json").write_text(json.dumps({"by_pid": 1}), encoding="utf-8")
    state = supervisor_state(tmp_path)

    Supervisor._on_broker_exit(state, "the egress broker exited")

    assert state.violations == []
    assert state.audited == [("broker-exit", {"reason": "the egress broker exited"})]


def test_broker_exit_after_signal_no_violation(tmp_path: Path) -> None:
    state = supervisor_state(tmp_path, interrupted_by="SIGTERM")

    Supervisor._on_broker_exit(state, "the egress broker exited")

    assert state.violations == []
