"""Plan building for `isolation`: the runtime of each agent, and rejecting gVisor where it cannot run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError, PlanError
from orchestrator.plan import ENVIRONMENT_CAUSES, HostFacts, RunPlan, SecuritySpec
from orchestrator.plan_checks import GVISOR_MIN_PIDS
from orchestrator.render import plan_text
from orchestrator.runtime.docker import _host_config_arguments, engine_runtimes
from orchestrator.seccomp import shipped_profile

from .conftest import agent, manifest_data

PlanFor = Callable[..., RunPlan]
MakeFacts = Callable[..., HostFacts]
WITH_RUNSC = ("runc", "runsc")


def test_runc_is_default(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir))

    assert plan.agents[0].isolation == "runc"
    assert plan.agents[0].container.runtime == "runc"


def test_agent_isolation_overrides_defaults(plan_for: PlanFor, make_facts: MakeFacts, source_dir: Path) -> None:
    data = manifest_data(
        source_dir,
        defaults={"isolation": "gvisor"},
        agents=[agent("sandboxed"), agent("plain", isolation="runc")],
    )

    plan = plan_for(data, facts=make_facts(runtimes=WITH_RUNSC))

    runtimes = {item.name: item.container.runtime for item in plan.agents}
    assert runtimes == {"sandboxed": "runsc", "plain": "runc"}


def test_gvisor_without_runsc_rejected(plan_for: PlanFor, make_facts: MakeFacts, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", isolation="gvisor")])

    with pytest.raises(PlanError) as caught:
        plan_for(data, facts=make_facts(runtimes=("runc",)))

    problems = caught.value.problems
    assert [problem.field for problem in problems] == ["agents[0].isolation"]
    assert problems[0].cause == "runtime-missing"
    assert problems[0].cause in ENVIRONMENT_CAUSES
    assert "apt-get install runsc" in problems[0].message
    assert "/etc/docker/daemon.json" in problems[0].message


def test_gvisor_default_without_runsc_names_defaults(
    plan_for: PlanFor, make_facts: MakeFacts, source_dir: Path
) -> None:
    data = manifest_data(source_dir, defaults={"isolation": "gvisor"})

    with pytest.raises(PlanError) as caught:
        plan_for(data, facts=make_facts(runtimes=("runc",)))

    assert [problem.field for problem in caught.value.problems] == ["defaults.isolation"]


def test_gvisor_low_pids_rejected(plan_for: PlanFor, make_facts: MakeFacts, source_dir: Path) -> None:
    low = GVISOR_MIN_PIDS - 1
    data = manifest_data(source_dir, agents=[agent("reader", isolation="gvisor", resources={"pids": low})])

    with pytest.raises(PlanError) as caught:
        plan_for(data, facts=make_facts(runtimes=WITH_RUNSC))

    assert [problem.field for problem in caught.value.problems] == ["agents[0].resources.pids"]
    assert str(GVISOR_MIN_PIDS) in caught.value.problems[0].message


def test_runc_low_pids_accepted(plan_for: PlanFor, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", resources={"pids": 16})])

    assert plan_for(data).agents[0].container.limits.pids == 16


def test_unknown_isolation_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", isolation="kata")])

    with pytest.raises(ManifestError) as caught:
        plan_for(data)

    assert "'runc' or 'gvisor'" in str(caught.value)


def test_plan_text_shows_isolation(plan_for: PlanFor, make_facts: MakeFacts, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", isolation="gvisor")])

    text = plan_text(plan_for(data, facts=make_facts(runtimes=WITH_RUNSC)))

    assert "isolation gvisor (runtime runsc, registered with the engine)" in text
    assert "not applied by gVisor" in text


def test_engine_runtimes_from_info() -> None:
    info = {"Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc"}}}

    assert engine_runtimes(info) == ("runc", "runsc")
    assert engine_runtimes({}) == ("runc",)


def test_plan_uses_shipped_seccomp_profile(plan_for: PlanFor, source_dir: Path) -> None:
    spec = plan_for(manifest_data(source_dir)).agents[0].container

    assert spec.security.seccomp_sha256 == shipped_profile().sha256
    assert shipped_profile().option in _host_config_arguments(spec)["security_opt"]


@pytest.mark.parametrize("value", ["unconfined", "", " Unconfined "])
def test_unconfined_seccomp_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        SecuritySpec(seccomp=value)


def test_changed_profile_refused_at_create(plan_for: PlanFor, source_dir: Path) -> None:
    spec = plan_for(manifest_data(source_dir)).agents[0].container
    changed = spec.model_copy(update={"security": spec.security.model_copy(update={"seccomp_sha256": "0" * 64})})

    with pytest.raises(Exception, match="changed since the plan"):
        _host_config_arguments(changed)
