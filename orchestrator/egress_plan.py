"""Plan network access: resolve `network`, `egress`, `apis` and `secrets` into each agent's broker route.

The rules: the agent's setting wins over `defaults`, which wins over the
profile; hosts are the profile's plus `egress.allow` of defaults and agent, and
a deny entry removes a host on every list (the broker checks deny first too).
Secrets are checked for presence here, so a missing key stops the run before
any container starts, but their values are read only when the broker starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .egress_models import (
    BROKER_ALIAS,
    BROKER_PORT,
    AgentEgress,
    ApiPlan,
    BrokerPlan,
    SecretPlan,
)
from .errors import Problem
from .manifest import Agent, LoadedManifest
from .manifest_egress import ApiOverride
from .profiles import PLACEHOLDER_KEY, ModelApi, Profile

# The runtime that runs a gVisor agent on a Docker network: runsc with --network=host, which uses the
# container's own network namespace (gVisor's own network stack cannot start on every machine).
GVISOR_NETWORK_RUNTIME = "runsc-network"
GVISOR_NETWORK_SETUP = (
    'add {"runsc-network": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}} to "runtimes" in '
    "/etc/docker/daemon.json and reload the engine (`sudo kill -HUP $(pidof dockerd)`), or use isolation runc"
)


def agent_network_name(run_id: str, agent: str) -> str:
    # The double dash cannot occur in an agent name, so no agent's container or network can take this name.
    return f"orchestrate-{run_id}--egress-{agent}"


def broker_container_name(run_id: str) -> str:
    return f"orchestrate-{run_id}--broker"


def upstream_network_name(run_id: str) -> str:
    return f"orchestrate-{run_id}--upstream"


@dataclass
class EgressResult:
    """One agent's network plan: None for `network: none`, with the variables its container gets."""

    egress: AgentEgress | None = None
    env: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    weakenings: list[str] = field(default_factory=list)


def plan_agent_egress(
    loaded: LoadedManifest, index: int, profile: Profile, *, environment: dict[str, str], run_id: str
) -> EgressResult:
    """Resolve one agent's network mode, hosts, APIs and secrets; collect problems instead of raising."""
    manifest = loaded.manifest
    agent = manifest.agents[index]
    defaults = manifest.defaults
    mode = agent.network or defaults.network or profile.network
    result = EgressResult()
    if mode == "none":
        result.problems.extend(_unused_settings(loaded, index, agent))
        return result

    deny = tuple(dict.fromkeys([*defaults.egress.deny, *agent.egress.deny]))
    allow = tuple(
        host for host in dict.fromkeys([*profile.hosts, *defaults.egress.allow, *agent.egress.allow])
        if host not in deny and host.rpartition(":")[0] not in deny
    )
    allow_private = tuple(dict.fromkeys([*defaults.egress.allow_private, *agent.egress.allow_private]))
    apis = _apis(loaded, index, profile, result.problems)
    secrets = tuple(_secret(loaded, index, api.secret, environment, result.problems) for api in apis)
    result.problems.extend(_secrets_in_env(loaded, index, secrets, environment))
    result.problems.extend(_secret_files_in_source(loaded, index, secrets))

    broker = manifest.broker
    result.egress = AgentEgress(
        network=agent_network_name(run_id, agent.name),
        allow=allow,
        deny=deny,
        allow_private=allow_private,
        apis=apis,
        secrets=tuple(dict.fromkeys(secrets)),
        max_requests=broker.max_requests,
        max_bytes=broker.max_bytes,
    )
    result.env = _agent_env(apis)
    result.weakenings = [
        f"agent {agent.name}: network allowlist through the egress broker, to "
        + (", ".join(allow) or "no host") + (f"; APIs {', '.join(api.name for api in apis)}" if apis else ""),
        *(f"agent {agent.name}: egress.allow_private {entry}: private, loopback and link-local addresses "
          "allowed for it" for entry in allow_private),
        # The broker adds the key to every request of the route, so over plain HTTP anyone on the path reads it.
        *(f"agent {agent.name}: API {api.name} upstream {api.upstream} is plain HTTP: the broker sends the key "
          "unencrypted" for api in apis if api.upstream.lower().startswith("http://")),
    ]
    return result


def _secrets_in_env(
    loaded: LoadedManifest, index: int, secrets: tuple[SecretPlan, ...], environment: dict[str, str]
) -> list[Problem]:
    """Reject host variables passed to the agent that carry a secret the broker adds for it.

    The secret's own name is not enough: a secret read from another variable (`secrets: {KEY: {env: TEAM}}`)
    would reach the sandbox through `env: [TEAM]`, and `defaults.env` applies to this agent as well.
    """
    manifest = loaded.manifest
    agent = manifest.agents[index]
    values = {environment[secret.env].strip() for secret in secrets if secret.env and environment.get(secret.env)}
    carriers = {secret.name for secret in secrets} | {str(secret.env) for secret in secrets if secret.env}
    problems = []
    for name in dict.fromkeys([*manifest.defaults.env, *agent.env]):
        if name in carriers or (environment.get(name) and environment.get(name, "").strip() in values):
            field_path = ("agents", index, "env") if name in agent.env else ("defaults", "env")
            problems.append(loaded.problem(
                field_path,
                f"the host variable {name} carries a secret that the egress broker adds; remove it from env, "
                "so the key stays out of every sandbox",
            ))
    return problems


def secrets_in_other_agents(loaded: LoadedManifest, egress: list[AgentEgress | None],
                            environment: dict[str, str]) -> list[Problem]:
    """Reject host variables that carry one agent's broker secret into any other agent of the run.

    An agent without network access can still leave the key in a shared folder or its output, where an
    agent with network access may read it and send it to a host on its list.
    """
    problems = []
    for index in range(min(len(loaded.manifest.agents), len(egress))):
        others = [secret for position, plan in enumerate(egress) if plan is not None and position != index
                  for secret in plan.secrets]
        mine = egress[index]
        own = set(mine.secrets) if mine is not None else set()
        foreign = tuple(secret for secret in others if secret not in own)
        if foreign:
            problems.extend(_secrets_in_env(loaded, index, foreign, environment))
    return problems


def _secret_files_in_source(loaded: LoadedManifest, index: int, secrets: tuple[SecretPlan, ...]) -> list[Problem]:
    """Reject a secret file inside the source folder, which every agent can read at /workspace/src."""
    source = Path(os.path.expanduser(loaded.manifest.source.path))
    source = (source if source.is_absolute() else loaded.base_dir / source).resolve()
    problems = []
    for secret in secrets:
        if secret.file is not None and secret.file.resolve().is_relative_to(source):
            problems.append(loaded.problem(
                ("agents", index, "secrets", secret.name),
                f"the file {secret.file} for secret {secret.name} is inside the source folder {source}, which "
                "agents can read; move it out of that folder",
            ))
    return problems


def _unused_settings(loaded: LoadedManifest, index: int, agent: Agent) -> list[Problem]:
    """Reject egress settings on an agent without network access: they would silently do nothing."""
    problems = []
    for name, value in (("egress", agent.egress.allow or agent.egress.allow_private), ("apis", agent.apis)):
        if value:
            problems.append(loaded.problem(
                ("agents", index, name),
                f"{name} has no effect without network access; add network: allowlist to agent {agent.name}, "
                f"or remove {name}",
            ))
    return problems


def _apis(loaded: LoadedManifest, index: int, profile: Profile, problems: list[Problem]) -> tuple[ApiPlan, ...]:
    agent = loaded.manifest.agents[index]
    by_name = {api.name: api for api in profile.apis}
    plans = []
    for api in profile.apis:
        plans.append(_merge(api, agent.apis.get(api.name)))
    for name, override in agent.apis.items():
        if name in by_name:
            continue
        missing = [key for key in ("upstream", "base_url_env", "secret", "header") if getattr(override, key) is None]
        if missing:
            problems.append(loaded.problem(
                ("agents", index, "apis", name),
                f"profile {profile.name} has no API named {name}, so this entry defines a new one and needs "
                f"{', '.join(missing)}; or use one of: {', '.join(by_name) or 'none'}",
            ))
            continue
        plans.append(ApiPlan(
            name=name, upstream=str(override.upstream), base_url_env=str(override.base_url_env),
            secret=str(override.secret), header=str(override.header), scheme=override.scheme or "plain",
            placeholder_env=tuple(override.placeholder_env or ()),
        ))
    return tuple(plans)


def _merge(api: ModelApi, override: ApiOverride | None) -> ApiPlan:
    changes = {} if override is None else override.model_dump(exclude_none=True)
    merged = {**api.model_dump(), **changes}
    merged["placeholder_env"] = tuple(merged["placeholder_env"])
    return ApiPlan(**merged)


def _secret(
    loaded: LoadedManifest, index: int, name: str, environment: dict[str, str], problems: list[Problem]
) -> SecretPlan:
    manifest = loaded.manifest
    agent = manifest.agents[index]
    source = agent.secrets.get(name) or manifest.defaults.secrets.get(name)
    field_path: tuple[str | int, ...] = (
        ("agents", index, "secrets", name) if name in agent.secrets
        else ("defaults", "secrets", name) if name in manifest.defaults.secrets
        else ("agents", index)
    )

    if source is not None and source.file is not None:
        path = Path(os.path.expanduser(source.file))
        path = path if path.is_absolute() else loaded.base_dir / path
        if not os.access(path, os.R_OK) or not path.is_file():
            problems.append(loaded.problem(
                field_path, f"the file {path} for secret {name} is missing or unreadable; create it (mode 0600) "
                            "or fix secrets.{name}.file".replace("{name}", name),
            ))
        return SecretPlan(name=name, file=path)

    variable = source.env if source is not None and source.env is not None else name
    if not environment.get(variable):
        problems.append(loaded.problem(
            field_path,
            f"secret {name} is read from the variable {variable}, which is not set; export {variable}=... before "
            f"running, or name another source with secrets: {{{name}: {{file: PATH}}}}",
        ))
    return SecretPlan(name=name, env=variable)


def _agent_env(apis: tuple[ApiPlan, ...]) -> dict[str, str]:
    """Return the variables that point an agent's tools at the broker; none of them is a secret."""
    proxy = f"http://{BROKER_ALIAS}:{BROKER_PORT}"
    env = {
        "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
        "ALL_PROXY": proxy,
        # The API routes are reached directly, not through the proxy, and nothing else is on the network.
        "NO_PROXY": f"{BROKER_ALIAS},localhost,127.0.0.1", "no_proxy": f"{BROKER_ALIAS},localhost,127.0.0.1",
    }
    for api in apis:
        env[api.base_url_env] = f"{proxy}/{api.name}"
        for variable in api.placeholder_env:
            env[variable] = PLACEHOLDER_KEY
    return env


def plan_broker(loaded: LoadedManifest, *, run_id: str, image: str, image_id: str | None,
                labels: dict[str, str]) -> BrokerPlan:
    broker = loaded.manifest.broker
    named = broker.upstream_network_name
    return BrokerPlan(
        container_name=broker_container_name(run_id),
        image=image,
        image_id=image_id,
        # nobody:nogroup; the broker writes nothing, so it needs no UID of the host's.
        user="65534:65534",
        labels=labels,
        upstream_network=named or upstream_network_name(run_id),
        upstream_kind=broker.upstream_network,
        create_upstream=named is None,
    )
