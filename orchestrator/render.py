"""Plain-text views of a plan and of a run result, for people at a terminal."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .agent_profile import shortened
from .interactive import session_program
from .plan import AgentPlan, MountSpec, RunPlan
from .profiles import Profile
from .results import RunResult
from .units import format_duration, format_size


def _shown(path: Path | str) -> str:
    """Show a path relative to the current folder when it lies below it."""
    text = str(path)
    relative = os.path.relpath(text)
    return relative if not relative.startswith("..") else text


def plan_text(plan: RunPlan) -> str:
    lines = [
        f"Plan for run {plan.run_id}",
        f"  manifest  {_shown(plan.manifest)} (sha256 {plan.manifest_sha256[:12]})",
        f"  source    {_shown(plan.source)}, {_source_mode_text(plan)}",
        f"  output    {_shown(plan.output)}",
        f"  run folder {_shown(plan.run_dir)} (`orchestrate run` picks a new run id)",
    ]
    for shared in plan.shared:
        lines.append(f"  shared    {shared.path} ({shared.mode})")
    lines.append(f"  policy    {_policy_text(plan.policy)}")
    monitor, shutdown = plan.monitor, plan.shutdown
    lines.append(
        f"  monitor   posture every {monitor.posture_interval:g} s, rescan every {monitor.rescan_interval:g} s, "
        + ("publish while running" if monitor.publish_while_running else "publish after a clean exit only")
    )
    grace = min(shutdown.grace, shutdown.deadline / 2)
    cut = f" (cut from {shutdown.grace:g} s to fit the deadline)" if grace < shutdown.grace else ""
    lines.append(f"  shutdown  deadline {shutdown.deadline:g} s, grace {grace:g} s after a violation{cut}")
    if plan.broker is not None:
        broker = plan.broker
        lines.append(
            f"  broker    {broker.image} as {broker.user}, upstream network {broker.upstream_network} "
            f"({broker.upstream_kind}{'' if broker.create_upstream else ', existing'}), agents reach it as "
            f"{broker.alias}:{broker.port}"
        )
    for weakening in plan.weakenings:
        lines.append(f"  WEAKENED  {weakening}")
    for agent in plan.agents:
        lines.append("")
        lines.extend(_agent_lines(agent))
    return "\n".join(lines)


def _source_mode_text(plan: RunPlan) -> str:
    if plan.source_mode != "copy":
        return "read-only in every agent at /workspace/src"
    if (plan.source / ".git").exists():
        return ("a private writable clone per agent at /workspace/src, made from the committed HEAD "
                "(uncommitted changes are not copied)")
    return "a private writable copy of its files per agent at /workspace/src"


def _policy_text(policy: dict[str, str]) -> str:
    """Describe the policy in one line, naming only the kinds whose action is not shutdown."""
    others = {kind: action for kind, action in policy.items() if action != "shutdown"}
    if not others:
        return "shutdown on every violation"
    by_action: dict[str, list[str]] = {}
    for kind, action in others.items():
        by_action.setdefault(action, []).append(kind)
    rest = "; ".join(f"{action} on {', '.join(kinds)}" for action, kinds in sorted(by_action.items()))
    return f"shutdown on the other violations; {rest}"


def _agent_lines(agent: AgentPlan) -> list[str]:
    spec = agent.container
    limits = spec.limits
    security = spec.security
    image_id = f" ({spec.image_id[:19]})" if spec.image_id else ""
    env = ", ".join(spec.env_names) if spec.env_names else "none from the host"
    lines = [
        f"agent {agent.name} (profile {agent.profile})",
        f"  image     {spec.image}{image_id}",
        f"  command   {_command_text(agent)}",
        f"  wrapper   {spec.entrypoint[0]} as {spec.entrypoint[-1]}: ends the agent if orchestrate dies; "
        f"init {'on' if spec.init else 'off'}",
        f"  user      {spec.user}, workdir {spec.workdir}",
        f"  env       {env}; set by orchestrate: {', '.join(sorted(spec.fixed_env))}",
        f"  limits    {limits.cpus:g} CPU{'' if limits.cpus == 1 else 's'}, memory {format_size(limits.memory)}, "
        f"{limits.pids} processes, time {format_duration(agent.timeout)}",
        f"  security  network {security.network_mode}, capabilities dropped: {', '.join(security.cap_drop)}, "
        f"no-new-privileges, read-only root, {'privileged' if security.privileged else 'not privileged'}",
        f"  seccomp   {_seccomp_text(agent)}",
        f"  isolation {_isolation_text(agent)}",
    ]
    lines.extend(_profile_lines(agent))
    if agent.session_command is not None:
        # The keeper script is the container's command; the program runs in a terminal exec after the start.
        program = shlex.join(session_program(agent.session_command))
        lines[2] = (f"  command   {program} (interactive: in a terminal that `orchestrate attach` connects to; "
                    "the container runs a keeper)")
    lines.extend(_egress_lines(agent))
    lines.append("  mounts    " + _mount_line(spec.mounts[0]))
    lines.extend("            " + _mount_line(mount) for mount in spec.mounts[1:])
    if agent.writes:
        lines.append(f"  writes    {', '.join(agent.writes)}")
    lines.append("  labels    " + ", ".join(f"{key}={value}" for key, value in sorted(spec.labels.items())))
    return lines


def _egress_lines(agent: AgentPlan) -> list[str]:
    egress = agent.egress
    if egress is None:
        return []
    lines = [f"  egress    CONNECT to {', '.join(egress.allow) or 'no host'}; "
             f"at most {egress.max_requests} requests and {format_size(egress.max_bytes)}"]
    if egress.deny:
        lines.append(f"            denied: {', '.join(egress.deny)}")
    if egress.allow_private:
        lines.append(f"            private addresses allowed for: {', '.join(egress.allow_private)}")
    for api in egress.apis:
        secret = next(item for item in egress.secrets if item.name == api.secret)
        placeholder = f"; placeholder in {', '.join(api.placeholder_env)}" if api.placeholder_env else ""
        lines.append(f"  api       {api.name}: ${api.base_url_env} -> {api.upstream}, the broker adds {api.header} "
                     f"from {secret.source()}{placeholder}")
    return lines


def _command_text(agent: AgentPlan) -> str:
    """Show the command with the prompt text shortened, since a prompt can run to pages."""
    words = agent.container.command
    if agent.prompt:
        words = tuple(word.replace(agent.prompt, shortened(agent.prompt, 40)) for word in words)
    return shlex.join(words)


def _profile_lines(agent: AgentPlan) -> list[str]:
    """Describe the prompt, the route out the profile requests, its model APIs and its known limits."""
    lines = []
    needs = agent.needs
    if agent.prompt is not None:
        where = f", mounted read-only from {_shown(agent.prompt_file)}" if agent.prompt_file else ""
        lines.append(f"  prompt    {shortened(agent.prompt)!r} ({len(agent.prompt.encode())} bytes){where}")
    if agent.egress is not None:
        # The egress lines show the resolved hosts and APIs, manifest overrides included.
        needs = needs.model_copy(update={"network": "none", "apis": ()})
    if needs.network == "allowlist":
        hosts = ", ".join(needs.hosts) or "no host besides its model APIs"
        lines.append(f"  egress    the profile asks for allowlist ({hosts}), but the container has network none: "
                     "model requests fail")
    for api in needs.apis:
        lines.append(f"  api       {api.name}: {api.base_url_env} -> {api.upstream}; the broker adds "
                     f"{api.secret} as {api.header}, the agent holds a placeholder")
    for limit in needs.known_limits:
        lines.append(f"  limit     {limit}")
    return lines


def agents_text(profiles: list[Profile]) -> str:
    """List the agent profiles as a table with one row per profile."""
    rows = [("NAME", "IMAGE", "NETWORK", "HOSTS", "SECRETS", "DESCRIPTION")]
    for profile in profiles:
        rows.append((
            profile.name,
            profile.image or "(manifest's)",
            profile.network,
            ", ".join(profile.hosts) or "-",
            ", ".join(profile.secrets) or "-",
            profile.description,
        ))
    columns = len(rows[0]) - 1
    widths = [max(len(row[column]) for row in rows) for column in range(columns)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:columns], widths, strict=True)) + "  " + row[columns]
        for row in rows
    )


def _seccomp_text(agent: AgentPlan) -> str:
    security = agent.container.security
    if security.legacy_seccomp:
        return "the engine's default profile (a plan made before orchestrate had its own)"
    text = f"{_shown(security.seccomp)} (sha256 {(security.seccomp_sha256 or '')[:12]})"
    if agent.isolation == "gvisor":
        # Measured with runsc 0.0~20221219: without --oci-seccomp it ignores the container's profile, and with
        # it, clone3 fails with EPERM instead of the profile's ENOSYS, which breaks threads in glibc programs.
        text += "; not applied by gVisor, whose own kernel serves every system call of the agent"
    return text


def _isolation_text(agent: AgentPlan) -> str:
    # build_plan rejects an agent whose runtime the engine lacks, so every rendered plan's runtimes were there.
    runtime = f"runtime {agent.container.runtime}, registered with the engine"
    if agent.isolation != "gvisor":
        return f"runc ({runtime}): the agent shares the host's kernel"
    return (
        f"gvisor ({runtime}): the agent runs on gVisor's user-space kernel; the pids and memory limits also "
        "count gVisor's own threads and memory, and a fork past the pids limit ends the sandbox"
    )


def _mount_line(mount: MountSpec) -> str:
    mode = "ro" if mount.read_only else "rw"
    if mount.type == "bind":
        origin = _shown(mount.source or "")
    else:
        origin = f"tmpfs {format_size(mount.size or 0)}"
    return f"{mode} {origin} -> {mount.target}  ({mount.purpose})"


def result_text(result: RunResult) -> str:
    rows = [("AGENT", "STATE", "EXIT", "SECONDS", "FILES", "PUBLISHED", "NOTE")]
    for agent in result.agents:
        rows.append((
            agent.name,
            agent.state,
            "-" if agent.exit_code is None else str(agent.exit_code),
            "-" if agent.seconds is None else f"{agent.seconds:.2f}",
            str(agent.files),
            str(agent.published),
            agent.message or "",
        ))
    columns = len(rows[0]) - 1
    widths = [max(len(row[column]) for row in rows) for column in range(columns)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:columns], widths, strict=True)) + "  " + row[columns]
        for row in rows
    ]
    lines.append("")
    lines.append(f"run {result.run_id}: {result.headline()} in {result.seconds:.2f} s")
    lines.append(f"workspaces and logs: {_shown(result.run_dir / 'agents')}")
    if result.stopped_by is not None:
        lines.append(f"evidence: {_shown(result.run_dir / 'evidence')}")
    if result.audit_head:
        # On standard output too, so a CI log keeps the anchor even with --quiet.
        lines.append(f"audit log head: {result.audit_head}")
    return "\n".join(line.rstrip() for line in lines)
