"""The container runtime seam: what the orchestrator needs from a container engine.

Every method blocks; the async orchestration code calls them from worker
threads. `DockerRuntime` in `runtime.docker` is the implementation used today.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..plan import ContainerSpec, HostFacts


@dataclass(frozen=True)
class Created:
    container_id: str
    # Warnings the engine returned at create time, such as a limit it dropped.
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    oom_killed: bool
    running: bool


@dataclass(frozen=True)
class EffectiveLimits:
    """Limits read back from the container's cgroup, or None where they could not be read."""

    pids: int | None
    memory: int | None
    # CPUs the CFS quota allows (quota / period); 0 without a quota.
    cpus: float | None = None


class Lifeline(Protocol):
    """An open connection to a container's input; closing it, or the holder's death, ends the agent."""

    def close(self) -> None: ...


class Runtime(Protocol):
    def host_facts(self, images: list[str], environment: dict[str, str]) -> HostFacts: ...

    def create(self, spec: ContainerSpec, environment: dict[str, str], *, dns: tuple[str, ...] = (),
               network: str | None = None, sysctls: dict[str, str] | None = None) -> Created: ...

    def attach_lifeline(self, container_id: str) -> Lifeline: ...

    def start(self, container_id: str) -> None: ...

    def wait(self, container_id: str) -> None:
        """Block until the container is not running; no client timeout applies."""

    def status(self, container_id: str) -> ExitStatus: ...

    def inspect(self, container_id: str) -> dict[str, Any]: ...

    def effective_limits(self, inspect: dict[str, Any]) -> EffectiveLimits:
        """Read the limits in force from the cgroup of the container that `inspect` describes."""

    def signal(self, container_id: str, signal: str) -> None: ...

    def save_logs(self, container_id: str, path: Path, *, max_bytes: int) -> int: ...

    def remove(self, container_id: str) -> None: ...

    def list_labelled(self, labels: dict[str, str | None]) -> list[str]: ...
