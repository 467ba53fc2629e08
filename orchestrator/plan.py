"""Resolve a manifest into the exact container specs that `run` starts.

`build_plan` is pure: it takes the manifest and facts about the host and returns
a `RunPlan`, or raises `PlanError` listing every unsafe or impossible setting.
`orchestrate plan` prints this object, so what runs is what was reviewed.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import __version__
from .agent_profile import PROMPT_TARGET, ResolvedAgent, final_command, prompt_env, resolve
from .egress_models import AgentEgress, BrokerPlan
from .egress_plan import (
    GVISOR_NETWORK_RUNTIME,
    GVISOR_NETWORK_SETUP,
    EgressResult,
    plan_agent_egress,
    plan_broker,
    secrets_in_other_agents,
)
from .errors import PlanError, Problem
from .interactive import keeper_command, session_command
from .layout import HOME_TARGET, OUTPUT_TARGET, SHARED_TARGET, SOURCE_TARGET, STATE_FOLDER, TMP_TARGET
from .lifeline import wrapped_command
from .manifest import DEFAULT_IMAGE, Agent, Isolation, LoadedManifest, Monitor, Resources, Shutdown
from .plan_checks import check_paths, isolation_problems, read_prompt, shared_writable_mounts
from .profiles import PLACEHOLDER_KEY, ModelApi
from .seccomp import shipped_profile
from .source_copy import copy_path
from .violations import full_policy

# The unprivileged UID and GID that agents run as when orchestrate itself runs as root.
FALLBACK_UID = 1000
FALLBACK_GID = 1000

LABEL_RUN = "orchestrate.run"
LABEL_AGENT = "orchestrate.agent"
LABEL_VERSION = "orchestrate.version"
# Set to "broker" on the egress broker's container and to "egress" on the run's networks.
LABEL_ROLE = "orchestrate.role"
# The name of an agent's own egress network: orchestrate-<run>--egress-<agent>.
EGRESS_NETWORK = re.compile(r"orchestrate-[a-z0-9-]+--egress-[a-z0-9-]+")

# The value of SecuritySpec.seccomp in plans written before orchestrate had its own profile.
LEGACY_SECCOMP = "default"
# The engine runtime that runs each isolation.
RUNTIMES: dict[str, str] = {"runc": "runc", "gvisor": "runsc"}
# Causes of plan problems that are the machine's, not the manifest's: `run` exits 4 for them.
ENVIRONMENT_CAUSES = frozenset({"image-missing", "runtime-missing"})


@dataclass(frozen=True)
class HostFacts:
    """Facts about the machine that the plan depends on, gathered by the runtime."""

    uid: int
    gid: int
    cpu_count: int
    images: dict[str, str | None] = field(default_factory=dict)
    # VOLUME paths each image declares; Docker backs each with a writable volume of unlimited size.
    image_volumes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    image_entrypoints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Host UID that container UID 0 maps to under userns-remap; 0 without remapping.
    userns_offset: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    homes: tuple[Path, ...] = ()
    # Runtimes the engine has registered (`docker info`, Runtimes), such as runc and runsc.
    runtimes: tuple[str, ...] = ("runc",)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class MountSpec(Frozen):
    type: Literal["bind", "tmpfs"]
    target: str
    read_only: bool
    source: str | None = None
    size: int | None = None
    purpose: str


class LimitSpec(Frozen):
    cpus: float
    memory: int
    pids: int


class SecuritySpec(Frozen):
    # "none", or the agent's own internal network to the egress broker; never host, bridge or another container.
    network_mode: str = "none"
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    privileged: bool = False
    no_new_privileges: bool = True
    read_only_rootfs: bool = True
    # The project's seccomp profile: its file and the sha256 of the text sent to the engine. No manifest field
    # sets them, and the validators reject any value that would leave an agent unconfined. LEGACY_SECCOMP only
    # reads plan.json files of runs that ran under the engine's default profile; build_plan never writes it.
    seccomp: str = Field(default_factory=lambda: str(shipped_profile().path))
    seccomp_sha256: str | None = Field(default_factory=lambda: shipped_profile().sha256)
    ipc_mode: Literal["private"] = "private"

    @field_validator("network_mode")
    @classmethod
    def _own_network_only(cls, value: str) -> str:
        if value != "none" and not EGRESS_NETWORK.fullmatch(value):
            raise ValueError(f"network mode {value!r} is not allowed: agents have no network or their own egress one")
        return value

    @field_validator("seccomp")
    @classmethod
    def _never_unconfined(cls, value: str) -> str:
        if value.strip().lower() in ("", "unconfined"):
            raise ValueError(f"seccomp {value!r} is not allowed: agents run under orchestrate's own profile")
        return value

    @field_validator("seccomp_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f"seccomp_sha256 {value!r} is not a sha256 in hex")
        return value

    @property
    def legacy_seccomp(self) -> bool:
        return self.seccomp == LEGACY_SECCOMP


class ContainerSpec(Frozen):
    name: str
    hostname: str
    image: str
    image_id: str | None
    # The lifeline wrapper, then the image's entrypoint (unless it is only an init) and the agent's command.
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    # The engine's init runs as PID 1, reaping zombies and passing signals on.
    init: bool = True
    user: str
    workdir: str
    env_names: tuple[str, ...]
    # Variables the orchestrator sets itself; none of them is a secret.
    fixed_env: dict[str, str]
    mounts: tuple[MountSpec, ...]
    limits: LimitSpec
    security: SecuritySpec = SecuritySpec()
    runtime: str = "runc"
    labels: dict[str, str]


class PublishLimitSpec(Frozen):
    max_file_size: int
    max_total_bytes: int
    max_files: int


class AgentNeeds(Frozen):
    """Requirements of the agent's profile beyond the container: its route out, model APIs and known limits."""

    # The profile's network; the container's own setting is SecuritySpec.network_mode.
    network: Literal["none", "allowlist"] = "none"
    hosts: tuple[str, ...] = ()
    # Each API names its secret's variable only; the value is never part of a plan.
    apis: tuple[ModelApi, ...] = ()
    known_limits: tuple[str, ...] = ()


class AgentPlan(Frozen):
    name: str
    profile: str
    needs: AgentNeeds = AgentNeeds()
    # The prompt text, and the host file it is written to when the container reads it as a file.
    prompt: str | None = None
    prompt_file: Path | None = None
    isolation: Isolation = "runc"
    container: ContainerSpec
    workspace: Path
    log_path: Path
    timeout: float
    writes: tuple[str, ...]
    publish_limits: PublishLimitSpec
    # Host owner of the workspace, so the agent's UID can write it.
    host_uid: int
    host_gid: int
    # The agent's private writable source copy, mounted at /workspace/src when the source mode is `copy`.
    source_copy: Path | None = None
    # For an interactive agent, the exec command that runs its program in a terminal; the container runs a keeper.
    session_command: tuple[str, ...] | None = None
    # The agent's route out through the egress broker; None for network none.
    egress: AgentEgress | None = None


class SharedPlan(Frozen):
    path: str
    mode: Literal["exclusive", "append"]


class RunPlan(Frozen):
    run_id: str
    manifest_name: str
    manifest: Path
    manifest_sha256: str
    run_dir: Path
    source: Path
    source_mode: Literal["read-only", "copy"] = "read-only"
    output: Path
    agents: tuple[AgentPlan, ...]
    shared: tuple[SharedPlan, ...]
    weakenings: tuple[str, ...] = ()
    # The action for every violation kind, defaults filled in, so the plan shows what a violation does.
    policy: dict[str, str] = {}
    monitor: Monitor = Monitor()
    shutdown: Shutdown = Shutdown()
    # The egress broker; None when no agent has network access.
    broker: BrokerPlan | None = None


# Pattern of a run id given on the command line: the shape new_run_id makes, never with '/' or '..'.
RUN_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")


def new_run_id(manifest_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{manifest_name}-{stamp}-{secrets.token_hex(3)}"


def build_plan(loaded: LoadedManifest, facts: HostFacts, *, runs_root: Path, run_id: str) -> RunPlan:
    """Resolve every agent's container spec and check every invariant before anything starts."""
    manifest = loaded.manifest
    run_dir = runs_root / run_id
    paths = check_paths(loaded, facts, runs_root=runs_root, run_dir=run_dir)

    problems = []
    agents = []
    weakenings: list[str] = []
    for index, agent in enumerate(manifest.agents):
        resolved = resolve(agent, manifest.defaults.image)
        image = resolved.image
        if image not in facts.images:
            raise AssertionError(f"facts hold no entry for image {image}")
        if facts.images[image] is None:
            problems.append(_missing_image(loaded, index, resolved))

        prompt, prompt_problems = read_prompt(loaded, index, resolved)
        problems.extend(prompt_problems)

        for volume in facts.image_volumes.get(image, ()):
            problems.append(loaded.problem(
                ("agents", index, "image") if agent.image else ("defaults", "image"),
                f"image {image} declares VOLUME {volume}, which Docker would back with a writable volume of "
                "unlimited size outside the sandbox's limits; rebuild the image without VOLUME",
            ))

        limits = _limits(manifest.defaults.resources, agent)
        if limits.cpus > facts.cpu_count:
            problems.append(loaded.problem(
                ("agents", index, "resources", "cpus"),
                f"asks for {limits.cpus} CPUs but this machine has {facts.cpu_count}; lower it",
            ))

        isolation = agent.isolation or manifest.defaults.isolation
        problems.extend(isolation_problems(loaded, facts, index=index, isolation=isolation, pids=limits.pids))

        network = plan_agent_egress(loaded, index, resolved.profile, environment=facts.environment,
                                    run_id=run_id)
        problems.extend(network.problems)
        weakenings.extend(network.weakenings)
        if network.egress is not None and isolation == "gvisor" and GVISOR_NETWORK_RUNTIME not in facts.runtimes:
            problems.append(loaded.problem(
                ("agents", index, "isolation") if agent.isolation else ("defaults", "isolation"),
                f"isolation gvisor with network allowlist needs the engine runtime {GVISOR_NETWORK_RUNTIME}, which "
                f"is not registered; {GVISOR_NETWORK_SETUP}",
                cause="runtime-missing",
            ))

        env_names = tuple(dict.fromkeys([*manifest.defaults.env, *agent.env]))
        for name in env_names:
            if name not in facts.environment:
                field_path = ("agents", index, "env") if name in agent.env else ("defaults", "env")
                problems.append(loaded.problem(
                    field_path, f"host variable {name} is not set; export it or remove it from env",
                ))

        agents.append(_agent_plan(
            agent,
            resolved=resolved,
            prompt=prompt,
            image=image,
            image_id=facts.images[image],
            isolation=isolation,
            limits=limits,
            resources=_resources(manifest.defaults.resources, agent),
            env_names=env_names,
            workspace=paths.workspaces[agent.name],
            source=paths.source,
            source_copy=copy_path(run_dir, agent.name) if manifest.source.mode == "copy" else None,
            masks=paths.masks,
            run_dir=run_dir,
            run_id=run_id,
            facts=facts,
            timeout=agent.timeout or manifest.defaults.timeout,
            publish_limits=PublishLimitSpec(**{
                **manifest.limits.model_dump(),
                **agent.limits.model_dump(exclude_none=True),
            }),
            output=paths.output,
            network=network,
        ))

    broker = _broker(loaded, facts, run_id, agents, problems)
    problems.extend(secrets_in_other_agents(loaded, [item.egress for item in agents], facts.environment))
    problems.extend(paths.problems)
    if not problems:
        # A backstop behind the manifest checks, which already name the field of every overlap they find.
        for overlap in shared_writable_mounts(agents):
            problems.append(loaded.problem(("source",), f"{overlap}; give every agent its own folders"))
    if problems:
        # Agents that share the default image would each report the same missing image.
        problems = list(dict.fromkeys(problems))
        problems.sort(key=lambda problem: (problem.line or 0, problem.field))
        raise PlanError(problems)

    return RunPlan(
        run_id=run_id,
        manifest_name=manifest.name,
        manifest=loaded.path.resolve(),
        manifest_sha256=loaded.sha256,
        run_dir=run_dir,
        source=paths.source,
        source_mode=manifest.source.mode,
        output=paths.output,
        agents=tuple(agents),
        shared=tuple(SharedPlan(path=item.path, mode=item.mode) for item in manifest.shared),
        policy=full_policy(manifest.policy),
        monitor=manifest.monitor,
        shutdown=manifest.shutdown,
        broker=broker,
        weakenings=tuple(weakenings),
    )


def _missing_image(loaded: LoadedManifest, index: int, resolved: ResolvedAgent) -> Problem:
    agent = loaded.manifest.agents[index]
    fix = "build it with `orchestrate images build` or pull it with `docker pull`"
    if agent.image:
        field_path: tuple[str | int, ...] = ("agents", index, "image")
    elif resolved.profile.image:
        # No registry publishes the profile images; they are built here from pinned packages.
        field_path = ("agents", index, "profile")
        fix = f"build it with `orchestrate images build --profile {resolved.profile.name}`"
    else:
        field_path = ("defaults", "image")
    return loaded.problem(field_path, f"image {resolved.image} is not on this machine; {fix}", cause="image-missing")


def _broker(loaded: LoadedManifest, facts: HostFacts, run_id: str, agents: list[AgentPlan],
            problems: list[Problem]) -> BrokerPlan | None:
    """Plan the egress broker when any agent has network access; it runs from the base image."""
    if not any(agent.egress is not None for agent in agents):
        return None
    image_id = facts.images.get(DEFAULT_IMAGE)
    if image_id is None:
        problems.append(loaded.problem(
            ("broker",), f"the egress broker runs from {DEFAULT_IMAGE}, which is not on this machine; build it "
                         "with `orchestrate images build`",
            cause="image-missing",
        ))
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "broker", LABEL_VERSION: __version__}
    return plan_broker(loaded, run_id=run_id, image=DEFAULT_IMAGE, image_id=image_id, labels=labels)


def _resources(defaults: Resources, agent: Agent) -> Resources:
    overrides = agent.resources.model_dump(exclude_none=True)
    return defaults.model_copy(update=overrides)


def _limits(defaults: Resources, agent: Agent) -> LimitSpec:
    resources = _resources(defaults, agent)
    return LimitSpec(cpus=resources.cpus, memory=resources.memory, pids=resources.pids)


def _agent_plan(
    agent: Agent,
    *,
    resolved: ResolvedAgent,
    prompt: str | None,
    image: str,
    image_id: str | None,
    isolation: Isolation,
    limits: LimitSpec,
    resources: Resources,
    env_names: tuple[str, ...],
    workspace: Path,
    source: Path,
    source_copy: Path | None,
    masks: tuple[Path, ...],
    run_dir: Path,
    run_id: str,
    facts: HostFacts,
    timeout: float,
    publish_limits: PublishLimitSpec,
    output: Path,
    network: EgressResult,
) -> AgentPlan:
    if facts.uid == 0:
        uid, gid = FALLBACK_UID, FALLBACK_GID
    else:
        uid, gid = facts.uid, facts.gid

    if source_copy is not None:
        source_mounts = [MountSpec(type="bind", source=str(source_copy), target=SOURCE_TARGET, read_only=False,
                                   purpose="this agent's private copy of the source")]
    else:
        source_mounts = [
            MountSpec(type="bind", source=str(source), target=SOURCE_TARGET, read_only=True,
                      purpose="the source, read-only"),
            *(
                MountSpec(type="tmpfs", target=f"{SOURCE_TARGET}/{mask.relative_to(source)}",
                          read_only=True, size=4096,
                          purpose="hides a folder that orchestrate writes, inside the source")
                for mask in masks
            ),
        ]
    mounts = [
        *source_mounts,
        MountSpec(type="bind", source=str(workspace), target=OUTPUT_TARGET, read_only=False,
                  purpose="this agent's private workspace"),
        MountSpec(type="bind", source=str(output), target=SHARED_TARGET, read_only=True,
                  purpose="the shared output tree, read-only"),
        MountSpec(type="tmpfs", target=f"{SHARED_TARGET}/{STATE_FOLDER}", read_only=True, size=4096,
                  purpose="hides the publisher's locks and staging files"),
        MountSpec(type="tmpfs", target=TMP_TARGET, read_only=False, size=resources.tmp,
                  purpose="scratch space, counted against the memory limit"),
        MountSpec(type="tmpfs", target=HOME_TARGET, read_only=False, size=resources.home,
                  purpose="home directory for tool configuration"),
    ]
    profile = resolved.profile
    mounts.extend(
        MountSpec(type="tmpfs", target=folder, read_only=False, size=resources.home,
                  purpose=f"state folder of the {profile.name} CLI, sized like the home directory")
        for folder in profile.config_dirs
    )
    prompt_file = None
    if prompt is not None and resolved.uses_prompt_file():
        prompt_file = run_dir / "prompts" / f"{agent.name}.txt"
        mounts.append(MountSpec(type="bind", source=str(prompt_file), target=PROMPT_TARGET, read_only=True,
                                purpose="the prompt, read-only"))

    fixed_env = dict(profile.env)
    fixed_env.update({name: PLACEHOLDER_KEY for api in profile.apis for name in api.placeholder_env})
    fixed_env.update(prompt_env(resolved, prompt))
    # The variables that point the CLI at the broker, and placeholders for the APIs the manifest adds.
    fixed_env.update(network.env)
    fixed_env.update({"HOME": HOME_TARGET, "ORCHESTRATE_RUN": run_id, "ORCHESTRATE_AGENT": agent.name})

    agent_command = final_command(resolved, prompt)
    entrypoint, command = wrapped_command(facts.image_entrypoints.get(image, ()), agent_command)
    session = None
    if agent.interactive:
        # The exec runs what the container would have run: the image's entrypoint, then the command.
        session = session_command(command)
        entrypoint, command = wrapped_command((), keeper_command())
    container = ContainerSpec(
        name=f"orchestrate-{run_id}-{agent.name}",
        hostname=agent.name,
        image=image,
        image_id=image_id,
        entrypoint=entrypoint,
        command=command,
        user=f"{uid}:{gid}",
        workdir=agent.workdir,
        env_names=env_names,
        fixed_env=fixed_env,
        mounts=tuple(mounts),
        limits=limits,
        security=SecuritySpec(network_mode="none" if network.egress is None else network.egress.network),
        runtime=_runtime(isolation, network.egress),
        labels={LABEL_RUN: run_id, LABEL_AGENT: agent.name, LABEL_VERSION: __version__},
    )
    return AgentPlan(
        name=agent.name,
        profile=agent.profile,
        needs=AgentNeeds(network=profile.network, hosts=tuple(profile.hosts), apis=tuple(profile.apis),
                         known_limits=tuple(profile.limits)),
        prompt=prompt,
        prompt_file=prompt_file,
        isolation=isolation,
        container=container,
        workspace=workspace,
        log_path=run_dir / "agents" / f"{agent.name}.log",
        timeout=timeout,
        writes=tuple(agent.writes),
        publish_limits=publish_limits,
        host_uid=facts.userns_offset + uid,
        host_gid=facts.userns_offset + gid,
        source_copy=source_copy,
        session_command=session,
        egress=network.egress,
    )


def _runtime(isolation: Isolation, egress: AgentEgress | None) -> str:
    if egress is not None and isolation == "gvisor":
        return GVISOR_NETWORK_RUNTIME
    return RUNTIMES[isolation]


def container_environment(spec: ContainerSpec, environment: dict[str, str]) -> dict[str, str]:
    """Return the variables an agent receives: the named host variables and fixed ones."""
    values = {name: environment[name] for name in spec.env_names}
    values.update(spec.fixed_env)
    return values
