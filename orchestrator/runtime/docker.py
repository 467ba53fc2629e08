"""The Docker implementation of the runtime seam, on the docker SDK's low-level API.

The low-level API is used because it returns the engine's create-time
warnings (the high-level one drops them) and lets `wait` run with no client
timeout. Docker and requests exceptions are translated here, and only here.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount
from docker.utils import kwargs_from_env

from ..errors import DockerUnavailable, EnvironmentProblem
from ..plan import ContainerSpec, HostFacts, SecuritySpec, container_environment
from ..seccomp import Profile, load_profile
from . import Created, EffectiveLimits, ExitStatus
from .cgroups import read_effective_limits

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 60.0
# Bounds what the engine stores per container, so a chatty agent cannot fill the disk. Two files of
# 64 MiB of JSON lines hold roughly 90 MiB of plain output, more than the 64 MiB copied after exit.
# NOTE: an agent that prints more loses the start of its output to the engine's rotation.
LOG_MAX_SIZE = "64m"
LOG_MAX_FILES = "2"

T = TypeVar("T")


class ContainerGone(Exception):
    """The container no longer exists; its evidence may be lost."""


class RuntimeFailure(Exception):
    """The engine rejected a request for one container; the message contains its reason."""


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as exc:
        raise ContainerGone(f"{action}: {exc.explanation or exc}") from exc
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"{action}: {exc.explanation or exc}") from exc
    except requests.exceptions.Timeout as exc:
        raise RuntimeFailure(f"{action}: the request to the Docker engine timed out ({exc})") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        address = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        source = "from DOCKER_HOST" if os.environ.get("DOCKER_HOST") else "the default"
        raise DockerUnavailable(
            f"{action}: cannot reach the Docker engine at {address} ({source}): {exc}; start the engine "
            "(`sudo systemctl start docker` or `sudo dockerd &`), check `docker info`, or fix DOCKER_HOST"
        ) from exc


class DockerRuntime:
    def __init__(self, client: docker.DockerClient | None = None) -> None:
        if client is None:
            with _translated("connect"):
                client = docker.DockerClient.from_env(timeout=int(CONTROL_TIMEOUT), max_pool_size=128)
                client.ping()
        self._client = client
        self._api = client.api

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    def event_client(self) -> docker.APIClient:
        """Return a client of its own for the event stream, so closing that stream disturbs no other call."""
        with _translated("connect for events"):
            return docker.APIClient(**kwargs_from_env(), version=self._api.api_version)

    def close(self) -> None:
        self._client.close()

    def host_facts(self, images: list[str], environment: dict[str, str]) -> HostFacts:
        with _translated("read engine info"):
            info = self._api.info()
        found: dict[str, str | None] = {}
        volumes: dict[str, tuple[str, ...]] = {}
        entrypoints: dict[str, tuple[str, ...]] = {}
        for image in images:
            details = self._image_details(image)
            found[image] = None if details is None else str(details["Id"])
            if details is not None:
                config = details.get("Config") or {}
                volumes[image] = tuple(sorted(config.get("Volumes") or {}))
                entrypoints[image] = tuple(config.get("Entrypoint") or ())
        return HostFacts(
            uid=os.getuid(),
            gid=os.getgid(),
            cpu_count=int(info.get("NCPU") or os.cpu_count() or 1),
            images=found,
            image_volumes=volumes,
            image_entrypoints=entrypoints,
            userns_offset=_userns_offset(info),
            environment=environment,
            runtimes=engine_runtimes(info),
        )

    def _image_details(self, image: str) -> dict[str, Any] | None:
        try:
            with _translated(f"inspect image {image}"):
                return dict(self._api.inspect_image(image))  # type: ignore[no-untyped-call]
        except ContainerGone:
            return None

    def create(self, spec: ContainerSpec, environment: dict[str, str], *, dns: tuple[str, ...] = (),
               network: str | None = None, sysctls: dict[str, str] | None = None) -> Created:
        """Create a container; `dns`, `network` and `sysctls` serve agents behind the egress broker and the broker."""
        try:
            arguments = _host_config_arguments(spec)
        except EnvironmentProblem as exc:
            raise RuntimeFailure(f"create container {spec.name}: {exc}") from exc
        if network is not None:
            arguments["network_mode"] = network
        if dns:
            arguments["dns"] = list(dns)
        if sysctls:
            arguments["sysctls"] = sysctls
        host_config = self._api.create_host_config(**arguments)
        with _translated(f"create container {spec.name}"):
            response = self._api.create_container(
                image=spec.image_id or spec.image,
                entrypoint=list(spec.entrypoint),
                command=list(spec.command),
                # Not detached with stdin open: the engine sets OpenStdin and StdinOnce, the lifeline.
                stdin_open=True,
                detach=False,
                user=spec.user,
                working_dir=spec.workdir,
                environment=container_environment(spec, environment),
                labels=spec.labels,
                hostname=spec.hostname,
                name=spec.name,
                network_disabled=arguments["network_mode"] == "none",
                # An image's own health check runs as an exec, which the monitor must treat as tampering.
                healthcheck={"Test": ["NONE"]},
                host_config=host_config,
            )
        warnings = tuple(response.get("Warnings") or ())
        return Created(container_id=response["Id"], warnings=warnings)

    def attach_lifeline(self, container_id: str) -> AttachedInput:
        """Attach to the container's input; closing the returned socket, or dying, ends the agent."""
        with _translated(f"attach to container {container_id[:12]}"):
            stream = self._api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        return AttachedInput(stream)

    def start(self, container_id: str) -> None:
        with _translated(f"start container {container_id[:12]}"):
            self._api.start(container_id)

    def wait(self, container_id: str) -> None:
        with _translated(f"wait for container {container_id[:12]}"):
            self._api.wait(container_id, timeout=None, condition="not-running")

    def inspect(self, container_id: str) -> dict[str, Any]:
        with _translated(f"inspect container {container_id[:12]}"):
            return dict(self._api.inspect_container(container_id))

    def status(self, container_id: str) -> ExitStatus:
        state = self.inspect(container_id)["State"]
        return ExitStatus(
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            running=bool(state.get("Running")) or bool(state.get("Restarting")),
        )

    def effective_limits(self, inspect: dict[str, Any]) -> EffectiveLimits:
        pid = int(inspect["State"].get("Pid") or 0)
        return read_effective_limits(pid)

    def signal(self, container_id: str, signal: str) -> None:
        try:
            with _translated(f"send {signal} to container {container_id[:12]}"):
                self._api.kill(container_id, signal=signal)
        except RuntimeFailure as exc:
            # The engine returns 409 when the container has already stopped.
            if "is not running" not in str(exc):
                raise

    def save_logs(self, container_id: str, path: Path, *, max_bytes: int) -> int:
        """Copy the container's output to `path`, at most `max_bytes`; return bytes written."""
        with _translated(f"read logs of container {container_id[:12]}"):
            stream = self._api.logs(container_id, stdout=True, stderr=True, stream=True, follow=False)
            return copy_log_stream(stream, path, max_bytes=max_bytes)

    def remove(self, container_id: str) -> None:
        try:
            with _translated(f"remove container {container_id[:12]}"):
                self._api.remove_container(container_id, force=True, v=True)
        except ContainerGone:
            return

    # -- networks and the broker's channels ---------------------------------------------------------------

    def create_network(self, name: str, *, internal: bool, labels: dict[str, str]) -> str:
        # On an internal network, Docker 20.10 still gives the host's bridge the gateway address. The host accepts
        # connections there, so a container could reach every service the host listens on. inhibit_ipv4 leaves
        # the bridge without an address, so an internal network reaches only its own containers.
        options = {"com.docker.network.bridge.inhibit_ipv4": "true"} if internal else None
        with _translated(f"create network {name}"):
            response = self._api.create_network(name, driver="bridge", internal=internal, labels=labels,
                                                options=options, check_duplicate=True)
        return str(response["Id"])

    def inspect_network(self, name: str) -> dict[str, Any]:
        with _translated(f"inspect network {name}"):
            return dict(self._api.inspect_network(name))

    def connect(self, container_id: str, network: str, *, aliases: list[str]) -> None:
        with _translated(f"connect container {container_id[:12]} to network {network}"):
            self._api.connect_container_to_network(container_id, network, aliases=aliases)

    def remove_network(self, name: str) -> None:
        """Remove a network of the run, first disconnecting any container still on it.

        The engine refuses to remove a network with endpoints, so a container someone else connected to an
        agent's network would otherwise keep that network after the run and after `orchestrate cleanup`.
        """
        try:
            with _translated(f"inspect network {name}"):
                endpoints = self._api.inspect_network(name).get("Containers") or {}
        except ContainerGone:
            return
        for container_id in endpoints:
            try:
                with _translated(f"disconnect container {container_id[:12]} from network {name}"):
                    self._api.disconnect_container_from_network(container_id, name, force=True)
            except ContainerGone:
                continue
        try:
            with _translated(f"remove network {name}"):
                self._api.remove_network(name)
        except ContainerGone:
            return

    def list_labelled_networks(self, labels: dict[str, str | None]) -> dict[str, dict[str, str]]:
        """Return the labels of every network that carries `labels`, by network name."""
        filters = [key if value is None else f"{key}={value}" for key, value in labels.items()]
        with _translated("list networks"):
            found = self._api.networks(filters={"label": filters})
        return {str(item["Name"]): dict(item.get("Labels") or {}) for item in found}

    def follow_output(self, container_id: str) -> Any:
        """Return the container's output as a stream of byte chunks that ends when it exits; close() ends it."""
        with _translated(f"follow the output of container {container_id[:12]}"):
            return self._api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)

    def list_labelled(self, labels: dict[str, str | None]) -> list[str]:
        filters = [key if value is None else f"{key}={value}" for key, value in labels.items()]
        with _translated("list containers"):
            found = self._api.containers(all=True, filters={"label": filters})
        return [str(item["Id"]) for item in found]


class AttachedInput:
    """The attach connection to a container's input, kept open as the agent's lifeline."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def send(self, data: bytes) -> None:
        """Write to the container's input, such as the broker's configuration line."""
        raw = getattr(self._stream, "_sock", self._stream)
        raw.sendall(data)

    def close(self) -> None:
        # The SDK returns a SocketIO over a socket that its HTTP response also references.
        # Closing the SocketIO alone leaves the connection open, so shutdown ends it for the engine.
        raw = getattr(self._stream, "_sock", None)
        if isinstance(raw, socket.socket):
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raw.close()
        self._stream.close()


def _host_config_arguments(spec: ContainerSpec) -> dict[str, Any]:
    security = spec.security
    binds = [
        Mount(
            target=mount.target,
            source=mount.source,
            type="bind",
            read_only=mount.read_only,
            propagation="rprivate",
        )
        for mount in spec.mounts
        if mount.type == "bind"
    ]
    masks = [
        Mount(target=mount.target, source=None, type="tmpfs", read_only=True, tmpfs_size=mount.size)
        for mount in spec.mounts
        if mount.type == "tmpfs" and mount.read_only
    ]
    uid, gid = spec.user.split(":")
    # Writable tmpfs mounts go through Tmpfs because only its option string takes uid and gid.
    tmpfs = {
        mount.target: f"rw,nosuid,nodev,size={mount.size},uid={uid},gid={gid},mode=0700"
        for mount in spec.mounts
        if mount.type == "tmpfs" and not mount.read_only
    }
    security_options = ["no-new-privileges:true"] if security.no_new_privileges else []
    if not security.legacy_seccomp:
        security_options.append(seccomp_profile(security).option)

    return {
        "network_mode": security.network_mode,
        "cap_drop": list(security.cap_drop),
        "cap_add": list(security.cap_add) or None,
        "privileged": security.privileged,
        "read_only": security.read_only_rootfs,
        "security_opt": security_options,
        "ipc_mode": security.ipc_mode,
        "mounts": binds + masks,
        "tmpfs": tmpfs,
        "nano_cpus": int(spec.limits.cpus * 1_000_000_000),
        "mem_limit": spec.limits.memory,
        # Equal to the memory limit: no swap, so the memory limit is the real ceiling.
        "memswap_limit": spec.limits.memory,
        "pids_limit": spec.limits.pids,
        "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}),
        "runtime": spec.runtime,
        "init": spec.init,
    }


def engine_runtimes(info: dict[str, Any]) -> tuple[str, ...]:
    """Return the names of the runtimes the engine has registered, from its `docker info` data."""
    runtimes = info.get("Runtimes")
    if not isinstance(runtimes, dict):
        return ("runc",)
    return tuple(sorted(str(name) for name in runtimes))


def seccomp_profile(security: SecuritySpec) -> Profile:
    """Return the planned seccomp profile; raise when its file no longer has the planned content."""
    profile = _cached_profile(security.seccomp)
    if profile.sha256 != security.seccomp_sha256:
        raise EnvironmentProblem(
            f"the seccomp profile {security.seccomp} changed since the plan was made (planned sha256 "
            f"{security.seccomp_sha256}, now {profile.sha256}); run `orchestrate plan` again and review it"
        )
    return profile


@lru_cache(maxsize=4)
def _cached_profile(path: str) -> Profile:
    # Read once per process: posture checks rebuild the host config of every agent every few seconds.
    return load_profile(Path(path))


def _userns_offset(info: dict[str, Any]) -> int:
    """Return the host UID that container UID 0 maps to when the engine remaps user namespaces."""
    options = " ".join(info.get("SecurityOptions") or [])
    if "name=rootless" in options:
        raise EnvironmentProblem(
            "rootless Docker is not supported yet: workspace ownership cannot be mapped; "
            "use the system Docker engine"
        )
    if "name=userns" not in options:
        return 0
    return _subordinate_start("dockremap")


def _subordinate_start(user: str) -> int:
    try:
        with open("/etc/subuid", encoding="utf-8") as subuid:
            for line in subuid:
                name, start, _count = line.strip().split(":")
                if name == user:
                    return int(start)
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"userns-remap is on but /etc/subuid cannot be read: {exc}") from exc
    raise EnvironmentProblem(f"userns-remap is on but /etc/subuid has no entry for {user}")


def copy_log_stream(stream: Iterable[bytes], path: Path, *, max_bytes: int) -> int:
    """Write a log stream to `path`, at most `max_bytes` of it, then close the stream; return bytes written."""
    written = 0
    flushed_at = time.monotonic()
    try:
        with path.open("wb", buffering=1 << 20) as sink:
            for chunk in stream:
                room = max_bytes - written
                sink.write(chunk[:room])
                written += min(len(chunk), room)
                if written >= max_bytes:
                    sink.write(b"\n[orchestrate: output truncated at %d bytes]\n" % max_bytes)
                    break
                # Flush about once a second, so the file follows a live agent without a write per chunk.
                if time.monotonic() - flushed_at > 1.0:
                    sink.flush()
                    flushed_at = time.monotonic()
    finally:
        _close_stream(stream)
    return written


def _close_stream(stream: object) -> None:
    close: Callable[[], None] | None = getattr(stream, "close", None)
    if close is not None:
        close()
