"""The broker's configuration: one JSON document that the orchestrator writes to the broker's stdin.

It contains the API keys, so it never touches a file, a variable or a command
line: the broker reads it from its standard input, which only the orchestrator's
attach connection can write to, and keeps it in memory.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .policy import HostPolicy


class ConfigError(ValueError):
    """The configuration document is invalid; the message names the field."""


@dataclass(frozen=True)
class ApiRoute:
    """A model API: requests to /<name>/... go to `upstream` with the secret added in `header`."""

    name: str
    scheme: str
    host: str
    port: int
    base_path: str
    header: str
    # The whole header value, "Bearer " included where the API wants it.
    header_value: str

    def secret(self) -> str:
        """Return the key alone, without the "Bearer " that the header value may start with."""
        return self.header_value.removeprefix("Bearer ")

    def __repr__(self) -> str:
        # The dataclass repr would print the key into any traceback or log line that shows a route.
        return f"ApiRoute(name={self.name!r}, upstream={self.scheme}://{self.host}:{self.port}{self.base_path})"


@dataclass(frozen=True)
class AgentConfig:
    name: str
    # The broker's address on the agent's network, and that network's subnet.
    address: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    hosts: HostPolicy
    apis: dict[str, ApiRoute]
    max_requests: int
    max_bytes: int


@dataclass(frozen=True)
class BrokerConfig:
    port: int
    agents: tuple[AgentConfig, ...]


def parse_config(text: str) -> BrokerConfig:
    """Parse the configuration document; raise ConfigError naming the first invalid field."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the configuration is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError("the configuration must be a JSON object")

    port = _integer(document, "port", 1, 65535)
    agents = document.get("agents")
    if not isinstance(agents, list) or not agents:
        raise ConfigError("agents must be a non-empty list")
    return BrokerConfig(port=port, agents=tuple(_agent(item) for item in agents))


def _agent(item: Any) -> AgentConfig:
    if not isinstance(item, dict):
        raise ConfigError("each agent must be an object")
    name = _text(item, "name")
    try:
        subnet = ipaddress.ip_network(_text(item, "subnet"))
        address = str(ipaddress.ip_address(_text(item, "address")))
    except ValueError as exc:
        raise ConfigError(f"agent {name}: invalid address or subnet: {exc}") from None
    hosts = HostPolicy.from_lists(_strings(item, "allow"), _strings(item, "deny"), _strings(item, "allow_private"))
    apis = [_api(name, api) for api in item.get("apis") or []]
    return AgentConfig(
        name=name,
        address=address,
        subnet=subnet,
        hosts=hosts,
        apis={api.name: api for api in apis},
        max_requests=_integer(item, "max_requests", 0, 2**62),
        max_bytes=_integer(item, "max_bytes", 0, 2**62),
    )


def _api(agent: str, item: Any) -> ApiRoute:
    if not isinstance(item, dict):
        raise ConfigError(f"agent {agent}: each api must be an object")
    name = _text(item, "name")
    upstream = urlsplit(_text(item, "upstream"))
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        raise ConfigError(f"agent {agent}: api {name}: upstream must be an http or https URL")
    secret = _text(item, "secret")
    scheme = _text(item, "scheme")
    if scheme not in ("plain", "bearer"):
        raise ConfigError(f"agent {agent}: api {name}: scheme must be plain or bearer")
    return ApiRoute(
        name=name,
        scheme=upstream.scheme,
        host=upstream.hostname,
        port=upstream.port or (443 if upstream.scheme == "https" else 80),
        base_path=upstream.path.rstrip("/"),
        header=_text(item, "header"),
        header_value=f"Bearer {secret}" if scheme == "bearer" else secret,
    )


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string")
    if any(ord(char) < 32 for char in value):
        raise ConfigError(f"{key} contains a control character")
    return value


def _strings(item: dict[str, Any], key: str) -> list[str]:
    value = item.get(key) or []
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ConfigError(f"{key} must be a list of strings")
    return value


def _integer(item: dict[str, Any], key: str, low: int, high: int) -> int:
    value = item.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer from {low} to {high}")
    return value
