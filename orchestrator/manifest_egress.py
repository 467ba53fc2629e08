"""Manifest fields of network access: `network`, `egress`, `apis`, `secrets` and the `broker` settings.

An agent with `network: allowlist` reaches the hosts of its profile and its
`egress.allow` list through the egress broker, minus its `egress.deny` list.
Secrets are named here by where they come from, never by value.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .broker.policy import ip_literal
from .profiles import HOST_PORT
from .units import parse_size

# A deny entry may leave out the port, so it covers the host on every port.
HOST = re.compile(r"(?=.{1,255}$)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Anchored: pydantic searches a Field pattern anywhere in the value, so "A=B" would pass as the name "A".
VARIABLE_PATTERN = rf"^{SECRET_NAME.pattern}$"
API_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
UPSTREAM = r"^https?://[^/?#\s]+(/[^?#\s]*)?$"
DEFAULT_MAX_REQUESTS = 10_000
DEFAULT_MAX_BYTES = 1024**3

NetworkMode = Literal["none", "allowlist"]


def _check_host_port(value: object) -> object:
    if isinstance(value, str) and not HOST_PORT.fullmatch(value.lower()):
        raise ValueError(f"invalid host:port '{value}'; write a DNS name with its port, such as api.example.com:443")
    if isinstance(value, str) and not 0 < int(value.rpartition(":")[2]) < 65536:
        raise ValueError(f"invalid port in '{value}'; use a port from 1 to 65535")
    return value.lower() if isinstance(value, str) else value


def _check_deny(value: object) -> object:
    if isinstance(value, str) and not (HOST_PORT.fullmatch(value.lower()) or HOST.fullmatch(value.lower())):
        raise ValueError(f"invalid deny entry '{value}'; write a host name, or host:port, such as "
                         "uploads.example.com")
    return value.lower() if isinstance(value, str) else value


def _check_allow(value: object) -> object:
    value = _check_host_port(value)
    if isinstance(value, str) and ip_literal(value.rpartition(":")[0]) is not None:
        # The broker refuses IP literals on the allow list, so the entry would fail every request.
        raise ValueError(f"'{value}' is an IP address; write the host's DNS name, or list the address in "
                         "allow_private if it is a server on a Docker network")
    return value


def _check_variable(value: object) -> object:
    if isinstance(value, str) and not SECRET_NAME.fullmatch(value):
        raise ValueError(f"invalid variable name '{value}'; use letters, digits and underscores, such as API_KEY")
    return value


def _check_api_name(value: object) -> object:
    # The name is the first path segment of the API's route on the broker, and part of its base URL.
    if isinstance(value, str) and not API_NAME.fullmatch(value):
        raise ValueError(f"invalid API name '{value}'; use lowercase letters, digits and dashes, such as anthropic")
    return value


ApiName = Annotated[str, BeforeValidator(_check_api_name)]
HostPort = Annotated[str, BeforeValidator(_check_host_port)]
AllowEntry = Annotated[str, BeforeValidator(_check_allow)]
DenyEntry = Annotated[str, BeforeValidator(_check_deny)]


class EgressModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Egress(EgressModel):
    """Hosts added to the profile's (`allow`), removed from them (`deny`, which wins), and private opt-ins."""

    allow: list[AllowEntry] = []
    deny: list[DenyEntry] = []
    # host:port entries that may resolve to private, loopback or link-local addresses, or be IP literals.
    # Needed for servers on Docker networks, such as a mock API in a test; each one is a weakening.
    allow_private: list[HostPort] = []


class SecretSource(EgressModel):
    """A secret's source: a variable of the orchestrator's own environment, or a file."""

    env: str | None = Field(default=None, pattern=VARIABLE_PATTERN)
    file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env: VARIABLE or file: PATH")
        return self


class ApiOverride(EgressModel):
    """Changes to a profile's model API, or a whole new API for a custom agent."""

    upstream: str | None = Field(default=None, pattern=UPSTREAM)
    base_url_env: str | None = Field(default=None, pattern=VARIABLE_PATTERN)
    secret: str | None = Field(default=None, pattern=VARIABLE_PATTERN)
    header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")
    scheme: Literal["plain", "bearer"] | None = None
    placeholder_env: list[Annotated[str, BeforeValidator(_check_variable)]] | None = None


class Broker(EgressModel):
    """Settings of the egress broker, for every agent with `network: allowlist`."""

    # bridge: the broker reaches the internet through Docker's default NAT. internal: a network with no
    # route off the machine, holding only containers that the user attaches, such as a test's mock servers.
    upstream_network: Literal["bridge", "internal"] = "bridge"
    # With `internal`, the name of an existing internal Docker network to use as the upstream side.
    # Without it, the run creates an empty internal network.
    upstream_network_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    # Per agent: requests, and bytes in both directions, before the broker refuses more.
    max_requests: int = Field(default=DEFAULT_MAX_REQUESTS, ge=1, le=10**9)
    max_bytes: Annotated[int, BeforeValidator(parse_size)] = DEFAULT_MAX_BYTES

    @model_validator(mode="after")
    def _name_needs_internal(self) -> Broker:
        if self.upstream_network_name is not None and self.upstream_network != "internal":
            raise ValueError("upstream_network_name needs upstream_network: internal")
        return self
