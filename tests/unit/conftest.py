"""Shared fixtures for the unit tests: a fake home, fake host facts and manifest files in tmp_path.

Nothing here talks to Docker. Plans are built from `HostFacts` made up by the
tests, so every image, variable and home directory is one the test chose.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.manifest import DEFAULT_IMAGE, LoadedManifest, load_manifest
from orchestrator.plan import HostFacts, RunPlan, build_plan

FAKE_IMAGE_ID = "sha256:" + "ab" * 32
RUN_ID = "demo-20240101-000000-abcdef"

ManifestData = dict[str, Any]


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A home directory that the plan checks treat as the user's, away from the real one."""
    home = tmp_path / "home" / "user"
    home.mkdir(parents=True)
    return home.resolve()


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    """A small project folder to use as the manifest's source."""
    source = tmp_path / "project"
    source.mkdir()
    (source / "app.py").write_text("print('hello')\n", encoding="utf-8")
    return source.resolve()


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return (tmp_path / "runs").resolve()


@pytest.fixture
def make_facts(fake_home: Path) -> Callable[..., HostFacts]:
    """Return a factory of host facts whose keyword arguments replace the default fields."""

    def make(**overrides: Any) -> HostFacts:
        fields: dict[str, Any] = {
            "uid": 1234,
            "gid": 5678,
            "cpu_count": 4,
            "images": {DEFAULT_IMAGE: FAKE_IMAGE_ID},
            "environment": {},
            "homes": (fake_home,),
        }
        fields.update(overrides)
        return HostFacts(**fields)

    return make


def manifest_data(source: Path | str, **fields: Any) -> ManifestData:
    """Return a valid manifest dict with one agent named reader, with `fields` replacing top-level keys."""
    data: ManifestData = {
        "version": 1,
        "name": "demo",
        "source": str(source),
        "agents": [{"name": "reader", "command": ["python3", "app.py"]}],
    }
    data.update(fields)
    return data


def agent(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": ["python3", "app.py"], **fields}


def write_manifest_data(folder: Path, data: ManifestData) -> Path:
    path = folder / "agents.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def load_data(tmp_path: Path) -> Callable[[ManifestData], LoadedManifest]:
    """Return a function that writes a manifest dict next to the test's files and loads it."""

    def load(data: ManifestData) -> LoadedManifest:
        return load_manifest(write_manifest_data(tmp_path, data))

    return load


@pytest.fixture
def plan_for(
    load_data: Callable[[ManifestData], LoadedManifest],
    make_facts: Callable[..., HostFacts],
    runs_root: Path,
) -> Callable[..., RunPlan]:
    """Return a function that builds the plan of a manifest dict and lets PlanError propagate."""

    def build(data: ManifestData, *, facts: HostFacts | None = None, runs: Path | None = None) -> RunPlan:
        return build_plan(
            load_data(data),
            facts if facts is not None else make_facts(),
            runs_root=runs if runs is not None else runs_root,
            run_id=RUN_ID,
        )

    return build
