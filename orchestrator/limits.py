"""Compare the limits an engine applied with the planned ones, from cgroup values and create warnings."""

from __future__ import annotations

from .plan import AgentPlan


def limit_problem(agent: AgentPlan, pids: int | None, memory: int | None, cpus: float | None = None) -> str | None:
    """Compare the limits read from the cgroup with the planned ones; None when they match."""
    planned = agent.container.limits
    if pids is None or memory is None:
        return "unverified limits: the container's cgroup could not be read from this process"
    if pids != planned.pids:
        actual = "no limit" if pids == 0 else str(pids)
        return f"pids limit not in force: planned {planned.pids}, cgroup has {actual}"
    # cgroup v1 rounds the memory limit down to a whole page.
    if memory == 0 or memory > planned.memory or memory < planned.memory - 64 * 1024:
        actual = "no limit" if memory == 0 else str(memory)
        return f"memory limit not in force: planned {planned.memory}, cgroup has {actual}"
    if cpus is not None and (cpus == 0 or abs(cpus - planned.cpus) > 0.01):
        actual = "no limit" if cpus == 0 else f"{cpus:g}"
        return f"CPU limit not in force: planned {planned.cpus:g}, cgroup has {actual}"
    return None


def is_dropped_limit(warning: str) -> bool:
    # A missing swap limit leaves the memory limit in force, so that warning alone is accepted.
    text = warning.lower()
    return "discarded" in text or ("not support" in text and "swap" not in text)
