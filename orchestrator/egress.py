"""Run the egress broker of a run: its networks, its container, its configuration and its event stream.

A start goes in this order. The run creates the upstream network and one
internal network per agent with network access. It creates the broker on the
upstream network and connects it to each agent network under the alias
`orchestrate-broker`. Then it attaches to the broker's input, starts it, reads
its address on each agent network, and writes the configuration, secrets
included, to its input. The broker reports a `ready` event on its output,
which the orchestrator follows for the whole run.

The attach connection stays open as the broker's lifeline: when the
orchestrator closes it or dies, the broker exits, and the agents behind it have
no route left (fail closed).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.from_thread

from .egress_models import BrokerPlan, SecretPlan
from .errors import EnvironmentProblem
from .plan import LABEL_ROLE, LABEL_RUN, ContainerSpec, LimitSpec, MountSpec, RunPlan
from .runtime import Created
from .runtime.docker import ContainerGone, RuntimeFailure
from .workers import Workers

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
BROKER_CODE_TARGET = "/opt/orchestrate/orchestrator"
READY_TIMEOUT = 30.0
# Lines of the broker's output that are not events are logged up to this count, then only counted.
MAX_LOGGED_LINES = 20

# Set in the broker's own network namespace only. Port 53 lets the unprivileged broker answer DNS. Forwarding
# is off because a new namespace copies the host's IPv4 setting, which is on wherever Docker runs: the broker
# joins every agent network and the upstream one, and must never route packets between them.
BROKER_SYSCTLS = {
    "net.ipv4.ip_unprivileged_port_start": "53",
    "net.ipv4.ip_forward": "0",
    "net.ipv6.conf.all.forwarding": "0",
}

EventHandler = Callable[[dict[str, Any]], None]
ExitHandler = Callable[[str], None]
CreatedHandler = Callable[[str], None]


class BrokerStartError(EnvironmentProblem):
    """The broker or its networks could not be set up; no agent with network access can start."""


class BrokerInput(Protocol):
    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class NetworkRuntime(Protocol):
    """The container engine calls that the broker needs beyond the agents' runtime calls."""

    def create(self, spec: ContainerSpec, environment: dict[str, str], *, dns: tuple[str, ...] = (),
               network: str | None = None, sysctls: dict[str, str] | None = None) -> Created: ...

    def create_network(self, name: str, *, internal: bool, labels: dict[str, str]) -> str: ...

    def inspect_network(self, name: str) -> dict[str, Any]: ...

    def connect(self, container_id: str, network: str, *, aliases: list[str]) -> None: ...

    def remove_network(self, name: str) -> None: ...

    def attach_lifeline(self, container_id: str) -> BrokerInput: ...

    def start(self, container_id: str) -> None: ...

    def inspect(self, container_id: str) -> dict[str, Any]: ...

    def remove(self, container_id: str) -> None: ...

    def follow_output(self, container_id: str) -> Any: ...


def broker_spec(plan: BrokerPlan) -> ContainerSpec:
    """Return the broker's container spec: the agents' hardening, the package source read-only, no workspace."""
    return ContainerSpec(
        name=plan.container_name,
        hostname=plan.alias,
        image=plan.image,
        image_id=plan.image_id,
        entrypoint=("python3", "-m", "orchestrator.broker"),
        command=(),
        user=plan.user,
        workdir="/",
        env_names=(),
        fixed_env={"PYTHONPATH": str(Path(BROKER_CODE_TARGET).parent), "PYTHONDONTWRITEBYTECODE": "1"},
        mounts=(MountSpec(type="bind", source=str(PACKAGE_DIR), target=BROKER_CODE_TARGET, read_only=True,
                          purpose="the broker's code, read-only"),),
        limits=LimitSpec(cpus=plan.cpus, memory=plan.memory, pids=plan.pids),
        labels=plan.labels,
    )


def read_secret(secret: SecretPlan, environment: dict[str, str]) -> str:
    """Read one secret's value; raise BrokerStartError naming the variable or file when it is gone."""
    if secret.file is not None:
        try:
            value = secret.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BrokerStartError(f"the file {secret.file} for secret {secret.name} cannot be read "
                                   f"({exc.strerror}); fix it and run again") from exc
    else:
        value = environment.get(str(secret.env), "").strip()
    if not value:
        raise BrokerStartError(f"secret {secret.name} is empty ({secret.source()}); set it and run again")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise BrokerStartError(f"secret {secret.name} ({secret.source()}) contains a control character; fix it")
    if not value.isascii():
        # The broker writes headers as Latin-1; a character outside ASCII would fail every request of the agent.
        raise BrokerStartError(f"secret {secret.name} ({secret.source()}) contains a non-ASCII character; "
                               "API keys are ASCII, so check that the right value is set")
    return value


class EgressBroker:
    def __init__(self, plan: RunPlan, runtime: NetworkRuntime, workers: Workers, environment: dict[str, str], *,
                 on_event: EventHandler, on_exit: ExitHandler, on_created: CreatedHandler | None = None) -> None:
        assert plan.broker is not None
        self.plan = plan
        self.broker = plan.broker
        self.runtime = runtime
        self.workers = workers
        self.environment = environment
        self._on_event = on_event
        self._on_exit = on_exit
        self._on_created = on_created
        self.container_id: str | None = None
        # The broker's address on each agent's network, which is also that agent's DNS server.
        self.addresses: dict[str, str] = {}
        self._subnets: dict[str, str] = {}
        self._networks: list[str] = []
        self._input: BrokerInput | None = None
        self._stream: Any = None
        self._ready = anyio.Event()
        self._error: str | None = None
        self._is_ready = False
        self._closing = False
        self._stray_lines = 0

    @property
    def agents(self) -> list[str]:
        return [agent.name for agent in self.plan.agents if agent.egress is not None]

    def create_options(self, agent: str) -> dict[str, Any]:
        """Return the create arguments of an agent behind the broker: the broker answers its DNS queries."""
        return {"dns": (self.addresses[agent],)}

    async def start(self, group: anyio.abc.TaskGroup) -> None:
        """Set up the networks and the broker, send its configuration and wait for it to be ready."""
        started = time.monotonic()
        try:
            await self.workers.call(self._create)
            group.start_soon(self._follow)
            configuration = self._configuration()
            assert self._input is not None
            await self.workers.call(self._input.send, configuration)
            del configuration
        except (RuntimeFailure, ContainerGone) as exc:
            raise BrokerStartError(f"the egress broker could not be started: {exc}") from exc

        with anyio.move_on_after(READY_TIMEOUT):
            await self._ready.wait()
        if self._error is not None or not self._is_ready:
            reason = self._error or f"it did not report ready within {READY_TIMEOUT:g} s"
            raise BrokerStartError(f"the egress broker did not start: {reason}")
        log.info("egress broker %s ready for %s in %.2f s", (self.container_id or "")[:12], ", ".join(self.agents),
                 time.monotonic() - started)

    # -- setup, in a worker thread ------------------------------------------------------------------------

    def _create(self) -> None:
        broker = self.broker
        run_labels = {LABEL_RUN: self.plan.run_id}
        if broker.create_upstream:
            self.runtime.create_network(broker.upstream_network, internal=broker.upstream_kind == "internal",
                                        labels={**run_labels, LABEL_ROLE: "upstream"})
            self._networks.append(broker.upstream_network)
        else:
            self._check_named_upstream(broker.upstream_network)

        for agent in self.plan.agents:
            if agent.egress is not None:
                self.runtime.create_network(agent.egress.network, internal=True,
                                            labels={**run_labels, LABEL_ROLE: "egress"})
                self._networks.append(agent.egress.network)

        created = self.runtime.create(broker_spec(broker), {}, network=broker.upstream_network,
                                      sysctls=BROKER_SYSCTLS)
        self.container_id = created.container_id
        if self._on_created is not None:
            # Called in this thread before the start, so the monitor receives every engine event of the broker.
            self._on_created(created.container_id)
        for agent in self.plan.agents:
            if agent.egress is not None:
                self.runtime.connect(created.container_id, agent.egress.network, aliases=[broker.alias])
        self._input = self.runtime.attach_lifeline(created.container_id)
        self.runtime.start(created.container_id)
        self._read_addresses(created.container_id)

    def _check_named_upstream(self, name: str) -> None:
        try:
            details = self.runtime.inspect_network(name)
        except ContainerGone:
            raise BrokerStartError(f"broker.upstream_network_name {name} does not exist; create it with "
                                   f"`docker network create --internal {name}` or remove the setting") from None
        if not details.get("Internal"):
            raise BrokerStartError(f"broker.upstream_network_name {name} is not an internal network; use one made "
                                   "with `docker network create --internal`, or upstream_network: bridge")

    def _read_addresses(self, container_id: str) -> None:
        networks = ((self.runtime.inspect(container_id).get("NetworkSettings") or {}).get("Networks") or {})
        for agent in self.plan.agents:
            if agent.egress is None:
                continue
            endpoint = networks.get(agent.egress.network) or {}
            address, prefix = endpoint.get("IPAddress"), endpoint.get("IPPrefixLen")
            if not address or not prefix:
                raise BrokerStartError(f"the broker has no address on network {agent.egress.network}")
            self.addresses[agent.name] = str(address)
            self._subnets[agent.name] = str(ipaddress.ip_interface(f"{address}/{prefix}").network)

    def _configuration(self) -> bytes:
        """Return the broker's configuration line. It contains the secrets: it is sent, never stored."""
        agents = []
        for agent in self.plan.agents:
            egress = agent.egress
            if egress is None:
                continue
            secrets = {secret.name: read_secret(secret, self.environment) for secret in egress.secrets}
            agents.append({
                "name": agent.name,
                "address": self.addresses[agent.name],
                "subnet": self._subnets[agent.name],
                "allow": list(egress.allow),
                "deny": list(egress.deny),
                "allow_private": list(egress.allow_private),
                "apis": [
                    {"name": api.name, "upstream": api.upstream, "header": api.header, "scheme": api.scheme,
                     "secret": secrets[api.secret]}
                    for api in egress.apis
                ],
                "max_requests": egress.max_requests,
                "max_bytes": egress.max_bytes,
            })
        return (json.dumps({"port": self.broker.port, "agents": agents}) + "\n").encode("utf-8")

    # -- the event stream ---------------------------------------------------------------------------------

    async def _follow(self) -> None:
        try:
            await self.workers.block(self._follow_blocking)
        finally:
            self._ready.set()

    def _follow_blocking(self) -> None:
        assert self.container_id is not None
        try:
            self._stream = self.runtime.follow_output(self.container_id)
            pending = b""
            for chunk in self._stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    anyio.from_thread.run_sync(self._line, line)
        except (RuntimeFailure, ContainerGone, OSError, ValueError) as exc:
            if not self._closing:
                log.warning("the egress broker's output stream failed: %s", exc)
        try:
            anyio.from_thread.run_sync(self._ended)
        except RuntimeError:
            # The event loop has already finished: the run is over, and no task waits for this report.
            log.debug("the egress broker's output ended after the run")

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            self._stray_lines += 1
            if self._stray_lines <= MAX_LOGGED_LINES:
                log.warning("egress broker: %s", line.decode("utf-8", errors="replace")[:500])
            return
        if event["event"] == "ready":
            self._is_ready = True
            self._ready.set()
        elif event["event"] == "error":
            self._error = str(event.get("message"))
            self._ready.set()
        else:
            self._on_event(event)

    def _ended(self) -> None:
        if not self._closing:
            self._on_exit(self._error or "the egress broker exited while agents ran; they have no route out")

    # -- stop ---------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop and remove the broker, then the networks the run created."""
        self._closing = True
        await self.workers.stop_call(self._stop_blocking)

    def _stop_blocking(self) -> None:
        if self._input is not None:
            _quietly(self._input.close)
        if self.container_id is not None:
            try:
                self.runtime.remove(self.container_id)
            except RuntimeFailure as exc:
                log.error("could not remove the egress broker %s: %s", self.container_id[:12], exc)
        if self._stream is not None:
            _quietly(self._stream.close)
        for network in reversed(self._networks):
            try:
                self.runtime.remove_network(network)
            except RuntimeFailure as exc:
                log.error("could not remove network %s: %s; remove it with `orchestrate cleanup %s`", network, exc,
                          self.plan.run_id)


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except (OSError, RuntimeFailure) as exc:
        log.debug("closing failed: %s", exc)
