"""How the benchmarks turn raw observations into figures: event times, import profiles, targets, monitoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.all import targets_of
from bench.cli import import_profile
from bench.launch import prepare_mount_sources, timings
from bench.scale import monitored_agents

SECOND = 1_000_000_000


def test_timings_measure_from_command_start() -> None:
    figures = timings(10 * SECOND, {"a": 11 * SECOND, "b": 12 * SECOND},
                      {"a": 13 * SECOND, "b": int(14.5 * SECOND)})

    assert figures == {"first_create": 1.0, "last_create": 2.0, "first_running": 3.0, "all_running": 4.5}


PROFILE = """\
import time: self [us] | cumulative | imported package
import time:        95 |         95 |   _io
import time:       219 |        540 | _frozen_importlib_external
import time:      3000 |       3000 |     pydantic.fields
import time:      1500 |      42000 | orchestrator.cli
import time: garbage line
"""


def test_import_profile_keeps_top_level_costliest_first() -> None:
    found = import_profile(PROFILE)

    assert [item["module"] for item in found] == ["orchestrator.cli", "_frozen_importlib_external"]
    assert found[0] == {"module": "orchestrator.cli", "cumulative_ms": 42.0, "self_ms": 1.5}


def test_import_profile_limits_entries() -> None:
    assert len(import_profile(PROFILE, entries=1)) == 1


def test_targets_pass_through_new_style_list() -> None:
    records = [{"target": "x", "pass": True}]

    assert targets_of("launch", {"targets": records}) == records


def test_targets_of_failed_benchmark_is_missed() -> None:
    found = targets_of("idle", {"error": "exit code 1: boom"})

    assert found[0]["pass"] is False
    assert "boom" in found[0]["measured"]


def test_targets_of_shutdown_read_per_count() -> None:
    result: dict[str, Any] = {"target": {"agents": 30, "seconds": 1.0},
                              "counts": [{"agents": 1, "orchestrate_stop_seconds": 0.1},
                                         {"agents": 30, "orchestrate_stop_seconds": 1.2, "pass": False}]}

    found = targets_of("shutdown", result)

    assert len(found) == 1
    assert found[0]["measured"] == 1.2
    assert found[0]["pass"] is False


def test_targets_of_publish_compare_both_limits() -> None:
    result = {"publish_files_per_second": 12_000, "speed_vs_cp": 0.3,
              "targets": {"files_per_second": 10_000, "speed_vs_cp": 0.5}}

    found = targets_of("publish", result)

    assert [item["pass"] for item in found] == [True, False]


def test_targets_of_detect_and_lifeline() -> None:
    detect = {"median_ms": 0.2, "max_ms": 300.0, "targets": {"median_ms": 100.0, "max_ms": 250.0},
              "pass": {"median": True, "max": False}}
    lifeline = {"max_seconds": 0.2, "target_seconds": 10}

    assert [item["pass"] for item in targets_of("detect", detect)] == [True, False]
    assert targets_of("lifeline", lifeline)[0]["pass"] is True


def test_monitored_agents_need_publish_before_exit() -> None:
    lines = [
        {"kind": "published", "agent": "a"},
        {"kind": "agent-exited", "agent": "a"},
        {"kind": "agent-exited", "agent": "b"},
        # Published only at exit, so the monitor never saw b's file while it ran.
        {"kind": "published", "agent": "b"},
        {"kind": "result"},
    ]

    assert monitored_agents(lines) == {"a"}


def test_mount_sources_include_mask_points(tmp_path: Path) -> None:
    spec = {"mounts": [
        {"type": "bind", "target": "/workspace/shared", "source": str(tmp_path / "out"), "read_only": True},
        {"type": "bind", "target": "/workspace/src", "source": "/outside/src", "read_only": True},
        {"type": "tmpfs", "target": "/workspace/shared/.orchestrate", "source": None, "read_only": True},
        {"type": "tmpfs", "target": "/tmp", "source": None, "read_only": False},
    ]}

    prepare_mount_sources([spec], tmp_path)

    assert (tmp_path / "out" / ".orchestrate").is_dir()
    assert not Path("/outside/src").exists()
