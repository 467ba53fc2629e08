"""The red-team suite: every scenario of scenarios.py attacks a real run, on runc and on gVisor (runsc).

Each test reads one agent's outcome from its batch's run; the host-side tests
check, per runtime, that nothing outside the workspaces changed.
"""

from __future__ import annotations

import json
import stat

import pytest

from . import hostcheck
from .conftest import CONTROL_ATTACKS, RedTeam
from .scenarios import ATTACKS, BY_NAME, RUNTIMES, SCENARIOS


def _params() -> list[object]:
    params: list[object] = []
    for runtime in RUNTIMES:
        for scenario in SCENARIOS:
            hole = scenario.holes.get(runtime)
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=hole)] if hole else []
            params.append(pytest.param(runtime, scenario.name, id=f"{runtime}-{scenario.name}", marks=marks))
    return params


def test_suite_has_forty_attacks() -> None:
    assert len(ATTACKS) >= 40


@pytest.mark.parametrize("name", CONTROL_ATTACKS)
def test_control_attack_reaches_canary(redteam: RedTeam, name: str) -> None:
    """The network attacks succeed on the canary's own network, so a blocked one means the sandbox held."""
    verdict = redteam.control[name]
    assert verdict["succeeded"] is True, json.dumps(verdict, indent=2)


@pytest.mark.parametrize(("runtime", "name"), _params())
def test_scenario(redteam: RedTeam, runtime: str, name: str) -> None:
    scenario = BY_NAME[name]
    run = redteam.results(runtime)
    batch = run.batch_of(name)
    seen = batch.outcome(name)
    evidence = json.dumps({"seen": sorted(seen), "verdict": batch.verdict(name),
                           "violations": batch.violations(name), "agent": batch.agent(name)}, indent=2, default=str)

    assert "succeeded" not in seen, f"the attack reached its goal:\n{evidence}"
    expected = scenario.expected(runtime)
    assert any(alternative <= seen for alternative in expected), (
        f"expected one of {[sorted(item) for item in expected]}:\n{evidence}"
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sentinel_tree_unchanged(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    assert run.sentinel_after == run.sentinel_before


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_source_tree_unchanged(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    assert run.source_after == run.source_before


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_output_tree_holds_only_agent_files(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    agents = {scenario.name for scenario in SCENARIOS}
    unexpected = []
    for path in sorted(run.output.rglob("*")):
        relative = path.relative_to(run.output)
        if relative.parts[0] == ".orchestrate":
            continue
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and relative.parts[0] in agents:
            continue
        regular = stat.S_ISREG(info.st_mode) and not info.st_mode & (stat.S_ISUID | stat.S_ISGID)
        if not regular or relative.parts[0] not in agents or info.st_nlink != 1:
            unexpected.append(f"{relative} mode {info.st_mode:o} links {info.st_nlink}")
    assert unexpected == []
    assert not (run.output / "pub-claim-owner" / "report.md").exists()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_secret_or_host_file_published(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    for needle in (redteam.secret.encode(), b"root:x:0:0:", hostcheck.SECRET_PREFIX.encode()):
        assert hostcheck.files_containing(run.output, needle) == []
        assert hostcheck.files_containing(run.runs_dir, needle) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_container_left_behind(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    assert run.leftovers == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_only_orchestrate_created_containers(redteam: RedTeam, runtime: str) -> None:
    """Every container and network created during the batches carries a run label of this suite's batches."""
    run = redteam.results(runtime)
    run_ids = {batch.run_id for batch in run.batches.values()}
    ours = [item for item in run.creations if item.labels.get("orchestrate.run") in run_ids]
    # Network events carry no labels, only a name; orchestrate's own tooling names its networks orchestrate-*.
    strangers = [item for item in run.creations if item not in ours
                 and not any(key.startswith("orchestrate.") for key in item.labels)
                 and not item.labels.get("name", "").startswith("orchestrate")]
    assert strangers == []
    assert not [item for item in run.creations if item.kind == "network" and item in ours]
    assert len([item for item in ours if item.kind == "container"]) == len(SCENARIOS)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_canary_heard_only_the_control(redteam: RedTeam, runtime: str) -> None:
    run = redteam.results(runtime)
    control = {address for address in redteam.control_addresses if address}
    assert [hit for hit in run.canary_hits if hit.split()[-1] not in control] == []


def test_canary_heard_the_control(redteam: RedTeam) -> None:
    """The canary logs what reaches it, so an empty log after the batches is evidence, not silence."""
    heard = {hit.split()[1] for hit in redteam.canary.hits()}
    assert {"tcp", "udp", "dns53", "dns5353", "icmp"} <= heard


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batches_ran_to_the_end(redteam: RedTeam, runtime: str) -> None:
    """Under `warn` no violation stops a run; each batch ends on its own with every agent accounted for."""
    run = redteam.results(runtime)
    for batch in run.batches.values():
        assert batch.result["stopped_by"] is None, batch.stderr[-2000:]
        ended = [record for record in batch.records if record["kind"] == "run-end"]
        assert ended, f"{batch.batch}: no run-end record"
    assert run.seconds < 180, f"the {runtime} batches took {run.seconds:.0f} s"
    print(f"{runtime}: batches took {run.seconds:.1f} s")  # noqa: T201 - shown with -s, for the time budget
