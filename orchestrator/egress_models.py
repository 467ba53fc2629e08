"""Plan records of network access: each agent's route through the broker, and the broker itself.

Secrets appear only by name and source (a variable name or a file path), never
by value, because the plan is printed and saved as plan.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

# The name agents reach the broker by, on each agent's own network, and its port.
BROKER_ALIAS = "orchestrate-broker"
BROKER_PORT = 3128


class EgressFrozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SecretPlan(EgressFrozen):
    """A secret the broker adds to requests, and where the orchestrator reads it at run start."""

    name: str
    env: str | None = None
    file: Path | None = None

    def source(self) -> str:
        return f"file {self.file}" if self.file is not None else f"variable {self.env}"


class ApiPlan(EgressFrozen):
    name: str
    upstream: str
    base_url_env: str
    secret: str
    header: str
    scheme: Literal["plain", "bearer"] = "plain"
    placeholder_env: tuple[str, ...] = ()


class AgentEgress(EgressFrozen):
    """One agent's route out: its own internal network to the broker, and what the broker lets through."""

    network: str
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()
    apis: tuple[ApiPlan, ...] = ()
    secrets: tuple[SecretPlan, ...] = ()
    max_requests: int
    max_bytes: int


class BrokerPlan(EgressFrozen):
    """The broker container and its upstream network, planned once per run that has an allowlist agent."""

    container_name: str
    image: str
    image_id: str | None
    user: str
    labels: dict[str, str]
    upstream_network: str
    upstream_kind: Literal["bridge", "internal"]
    # False when the manifest names an existing internal network, which the run uses but never removes.
    create_upstream: bool
    port: int = BROKER_PORT
    alias: str = BROKER_ALIAS
    cpus: float = 1.0
    memory: int = 256 * 1024**2
    pids: int = 64
