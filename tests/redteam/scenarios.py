"""The red-team scenarios: what each attack is, which run it joins and what must happen on each runtime.

An outcome is a set of tokens seen after the run:

- `blocked`: the agent's verdict says its attack did not reach its goal;
- `detected:KIND`: the safety monitor recorded a violation of KIND for the agent;
- `finding:KIND`: the publisher recorded a finding of KIND for the agent's files;
- `state:STATE`: the agent's final state in result.json (for example `timed-out`).

A scenario passes when every token of one of its expected alternatives was seen
and its verdict never says `succeeded`. Where gVisor's kernel makes an attempt
fail that runc lets through to the monitor, the runsc expectation lists both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUNTIMES = ("runc", "runsc")
BATCHES = ("contain", "publisher", "resources")

BLOCKED: tuple[frozenset[str], ...] = (frozenset({"blocked"}),)


def detected(*kinds: str) -> tuple[frozenset[str], ...]:
    return (frozenset(f"detected:{kind}" for kind in kinds),)


def either(*alternatives: tuple[frozenset[str], ...]) -> tuple[frozenset[str], ...]:
    return tuple(item for alternative in alternatives for item in alternative)


def state(name: str) -> tuple[frozenset[str], ...]:
    return (frozenset({f"state:{name}"}),)


@dataclass(frozen=True)
class Scenario:
    """One attack, run as one agent named after it."""

    name: str
    batch: str
    # Expected outcomes per runtime; runsc falls back to runc's.
    runc: tuple[frozenset[str], ...]
    runsc: tuple[frozenset[str], ...] | None = None
    # Extra fields of the agent's manifest entry: resources, timeout, limits.
    agent: dict[str, Any] = field(default_factory=dict)
    # Scenarios that only exist to be attacked or to show that the run stayed healthy.
    control: bool = False
    # Per runtime, the reason when the scenario exposes a hole that cannot be closed yet (a strict xfail).
    holes: dict[str, str] = field(default_factory=dict)

    def expected(self, runtime: str) -> tuple[frozenset[str], ...]:
        if runtime == "runsc" and self.runsc is not None:
            return self.runsc
        return self.runc


SCENARIOS: tuple[Scenario, ...] = (
    # Network: every attempt aims at the suite's own canary, or at the container itself.
    Scenario("net-tcp", "contain", BLOCKED),
    Scenario("net-udp", "contain", BLOCKED),
    Scenario("net-dns", "contain", BLOCKED),
    Scenario("net-icmp", "contain", BLOCKED),
    Scenario("net-ipv6", "contain", BLOCKED),
    Scenario("net-raw-socket", "contain", BLOCKED),
    Scenario("net-packet-socket", "contain", BLOCKED),
    Scenario("net-abstract-listen", "contain", BLOCKED),
    Scenario("net-abstract-connect", "contain", BLOCKED),
    Scenario("net-docker-api", "contain", BLOCKED),
    Scenario("net-metadata-route", "contain", BLOCKED),
    # Privilege.
    # The setuid copy it makes in its workspace runs without root, and the monitor reports the file too.
    # Under gVisor the copy lives for a moment only and the host may not see the mode change in time
    # (one CI run out of several missed it), so there only the blocked part is required.
    Scenario("priv-setuid", "contain", (frozenset({"blocked", "detected:escape-attempt"}),), BLOCKED),
    Scenario("priv-sudo-su", "contain", BLOCKED),
    Scenario("priv-capabilities", "contain", BLOCKED),
    Scenario("priv-capability-acts", "contain", BLOCKED, holes={
        "runsc": "gVisor 20221219 lets an agent without CAP_SYS_NICE lower its nice value to -10; the priority "
                 "only orders the sandbox's own tasks, the host threads keep theirs",
    }),
    Scenario("priv-mount", "contain", BLOCKED),
    Scenario("priv-unshare", "contain", BLOCKED),
    Scenario("priv-ptrace", "contain", BLOCKED),
    Scenario("priv-mknod", "contain", BLOCKED),
    Scenario("priv-proc-sys", "contain", BLOCKED),
    Scenario("priv-cgroup", "contain", BLOCKED),
    Scenario("priv-keyring", "contain", BLOCKED),
    Scenario("priv-kernel-calls", "contain", BLOCKED),
    # File system, inside the container.
    Scenario("fs-write-source", "contain", BLOCKED),
    Scenario("fs-write-rootfs", "contain", BLOCKED),
    Scenario("fs-write-shared", "contain", BLOCKED),
    Scenario("fs-other-workspace", "contain", BLOCKED),
    Scenario("fs-victim", "contain", state("succeeded"), control=True),
    Scenario("fs-proc-root", "contain", BLOCKED),
    Scenario("fs-leaked-fds", "contain", BLOCKED),
    Scenario("fs-hardlink-out", "contain", BLOCKED),
    Scenario("fs-dotdot", "contain", BLOCKED),
    # Secrets.
    Scenario("sec-host-env", "contain", BLOCKED),
    Scenario("sec-host-home", "contain", BLOCKED),
    Scenario("sec-docker-config", "contain", BLOCKED),
    Scenario("sec-proc-environ", "contain", BLOCKED),
    # The publisher, through what agents leave in their workspaces.
    Scenario("pub-symlink-host", "publisher", detected("escape-attempt")),
    Scenario("pub-symlink-dot-loop", "publisher", detected("escape-attempt")),
    Scenario("pub-symlink-relative", "publisher", detected("escape-attempt")),
    Scenario("pub-symlink-folder", "publisher", detected("escape-attempt")),
    Scenario("pub-hard-link", "publisher", detected("escape-attempt")),
    Scenario("pub-fifo", "publisher", detected("escape-attempt"),
             runsc=either(BLOCKED, detected("escape-attempt"))),
    Scenario("pub-socket", "publisher", detected("escape-attempt"),
             runsc=either(BLOCKED, detected("escape-attempt"))),
    Scenario("pub-setuid", "publisher", detected("escape-attempt")),
    Scenario("pub-swap-race", "publisher", detected("escape-attempt")),
    Scenario("pub-long-names", "publisher", detected("quota-exceeded")),
    Scenario("pub-non-utf8", "publisher", (frozenset({"finding:invalid-name"}),)),
    Scenario("pub-claim-other", "publisher", detected("write-conflict", "claim-violation")),
    Scenario("pub-claim-owner", "publisher", state("succeeded"), control=True),
    # Resources.
    # On gVisor a limit may kill the whole sandbox before the agent can write its verdict.
    Scenario("res-fork-bomb", "resources", BLOCKED, either(BLOCKED, (frozenset({"no-verdict"}),)),
             agent={"resources": {"pids": 128}}),
    Scenario("res-memory-bomb", "resources", BLOCKED, either(BLOCKED, (frozenset({"no-verdict"}),)),
             agent={"resources": {"memory": "128m"}}),
    Scenario("res-cpu-spin", "resources", state("timed-out"), agent={"timeout": "4s", "resources": {"cpus": 0.5}}),
    Scenario("res-fill-tmpfs", "resources", BLOCKED, agent={"resources": {"tmp": "16m", "home": "8m"}}),
    Scenario("res-fill-workspace", "resources", detected("quota-exceeded"),
             agent={"limits": {"max_total_bytes": "8m"}}),
    Scenario("res-many-files", "resources", detected("quota-exceeded"), agent={"limits": {"max_files": 2000}}),
    Scenario("res-bystander", "resources", state("succeeded"), control=True),
)

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
ATTACKS = tuple(scenario for scenario in SCENARIOS if not scenario.control)
