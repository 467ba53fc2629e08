"""Helpers shared by the benchmarks that drive `orchestrate run` as a subprocess.

The engine's event stream gives the moment each container started, on the
engine's clock, so every launch path (orchestrate, the docker CLI, the SDK) is
timed by the same observer at no polling cost. The /proc readers give a process's
CPU time and peak resident memory. The argument builders turn one container spec
printed by `orchestrate plan --json` into the equivalent `docker run` flags and
SDK create arguments, so the plain-Docker baselines start the same hardened
containers that orchestrate starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from orchestrator.seccomp import load_profile

REPOSITORY = Path(__file__).resolve().parent.parent
# The console script next to this interpreter, so the figures include its start-up and imports.
ORCHESTRATE = Path(sys.executable).parent / "orchestrate"
# Baseline containers carry this label with a value unique to one benchmark process; cleanup removes only those.
BENCH_LABEL = "orchestrate.bench"
RUN_LABEL = "orchestrate.run"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def orchestrate_command(*arguments: str) -> list[str]:
    """Return the command line that runs orchestrate with `arguments`, preferring the installed console script."""
    if ORCHESTRATE.exists():
        return [str(ORCHESTRATE), *arguments]
    return [sys.executable, "-m", "orchestrator", *arguments]


def write_manifest(folder: Path, name: str, agents: list[dict[str, Any]], **extra: Any) -> Path:
    """Write a manifest of `agents` with its own empty source folder; `extra` adds top-level fields."""
    source = folder / "src"
    source.mkdir(exist_ok=True)
    manifest = folder / f"{name}.yaml"
    document = {"version": 1, "name": name, "source": str(source), "output": str(folder / "out"),
                "agents": agents, **extra}
    # JSON is valid YAML, and it needs no quoting rules for commands.
    manifest.write_text(json.dumps(document), encoding="utf-8")
    return manifest


def unique_name(kind: str) -> str:
    """Return a manifest name unique to this process and moment, so run ids never collide across runs."""
    return f"bench-{kind}-{os.getpid()}-{int(time.time() * 1000) % 1_000_000}"


# -- engine events -----------------------------------------------------------------------------------------


@dataclass
class ContainerEvents:
    """Container `create` and `start` events from the engine's event stream, read by a background thread.

    For each action, a container id maps to the event's time in nanoseconds since the epoch, on the
    engine's clock, which is this machine's clock. The stream is open when the constructor returns,
    so no event that follows can be missed, and reading it costs the timed processes nothing.
    """

    client: docker.APIClient
    times: dict[str, dict[str, int]] = field(default_factory=lambda: {"create": {}, "start": {}})
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    _condition: threading.Condition = field(default_factory=threading.Condition)
    _stream: Any = None

    def __post_init__(self) -> None:
        filters = {"type": "container", "event": list(self.times)}
        self._stream = self.client.events(decode=True, filters=filters)
        threading.Thread(target=self._read, name="container-events", daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                actor = event.get("Actor") or {}
                container_id = str(actor.get("ID") or event.get("id"))
                action = str(event.get("Action") or event.get("status"))
                with self._condition:
                    self.times.setdefault(action, {}).setdefault(container_id, int(event.get("timeNano") or 0))
                    self.attributes[container_id] = dict(actor.get("Attributes") or {})
                    self._condition.notify_all()
        except Exception:  # noqa: BLE001
            # close() ends the read with an error, and nothing waits on the stream any more.
            return

    def matching(self, action: str, label: str, prefix: str) -> dict[str, int]:
        """Return the `action` times of containers whose label `label` starts with `prefix`."""
        with self._condition:
            return {
                container: stamp for container, stamp in self.times.get(action, {}).items()
                if self.attributes[container].get(label, "").startswith(prefix)
            }

    def wait_started(self, label: str, prefix: str, count: int, *, timeout: float,
                     process: subprocess.Popen[bytes] | None = None) -> dict[str, int]:
        """Wait until `count` containers labelled `label`=`prefix`... have started and return their start times.

        Raises SystemExit on timeout, or when `process`, the program starting them, exits first.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(found := self.matching("start", label, prefix)) < count:
                if process is not None and process.poll() is not None:
                    raise SystemExit(f"the launching process exited with code {process.returncode} after "
                                     f"{len(found)} of {count} containers started")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"only {len(found)} of {count} containers labelled {label}={prefix}... started "
                                     f"within {timeout:.0f} s; check `docker ps -a` and the engine's log")
                # Wakes at least every 0.2 s, to notice a launching process that died.
                self._condition.wait(min(remaining, 0.2))
            return found

    def close(self) -> None:
        self._stream.close()


# -- cleanup -----------------------------------------------------------------------------------------------


def containers_with_label(api: docker.APIClient, label: str, prefix: str) -> list[str]:
    """Return the ids of all containers, running or not, whose label `label` starts with `prefix`."""
    listed = api.containers(all=True, filters={"label": label})
    return [str(item["Id"]) for item in listed if str((item.get("Labels") or {}).get(label, "")).startswith(prefix)]


def remove_containers(api: docker.APIClient, label: str, prefix: str) -> int:
    """Force-remove every container whose label `label` starts with `prefix`; return how many there were."""
    found = containers_with_label(api, label, prefix)
    for container_id in found:
        try:
            api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            continue
    return len(found)


# -- processes ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of process `pid` and all its threads, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name, field 2, may contain spaces, so fields are counted after its closing bracket.
        fields = stat.read().rsplit(")", 1)[1].split()
    # Fields 14 (utime) and 15 (stime), counted from 1, are the 12th and 13th after the bracket.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int, key: str = "VmHWM") -> int | None:
    """Return a memory figure of /proc/PID/status in KiB (VmHWM is the peak resident set), or None once gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class PeakMemory:
    """Samples a process's VmHWM every `interval` seconds, because it is gone from /proc once the process exits."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = memory_kib(self.pid)
            if value is None:
                return
            self.peak_kib = max(self.peak_kib, value)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def docker_cli(*arguments: str, timeout: float = 300) -> str:
    completed = subprocess.run(["docker", *arguments], capture_output=True, text=True, check=False, timeout=timeout)
    if completed.returncode != 0:
        raise SystemExit(f"`docker {' '.join(arguments[:3])} ...` failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


# -- container arguments from a plan -----------------------------------------------------------------------


def plan_containers(manifest: Path, runs: Path) -> list[dict[str, Any]]:
    """Return the container spec of every agent, as `orchestrate plan --json` prints it for runs under `runs`."""
    command = orchestrate_command("plan", str(manifest), "--runs-dir", str(runs), "--json")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"`orchestrate plan {manifest} --json` failed: {completed.stdout}{completed.stderr}")
    return [agent["container"] for agent in json.loads(completed.stdout)["agents"]]


def environment_of(spec: dict[str, Any]) -> dict[str, str]:
    # The benchmarks' manifests name no host variables, so the fixed ones are the whole environment.
    return dict(spec["fixed_env"])


def tmpfs_options(spec: dict[str, Any], mount: dict[str, Any]) -> str:
    """Return the option string of a writable tmpfs mount, the one form whose options take uid and gid."""
    uid, gid = spec["user"].split(":")
    return f"rw,nosuid,nodev,size={mount['size']},uid={uid},gid={gid},mode=0700"


def cli_run_arguments(spec: dict[str, Any], label: str) -> list[str]:
    """Return `docker run -d` arguments that create the container `spec` describes, labelled `label`.

    Mirrors the SDK call of orchestrate's Docker runtime: bind mounts, tmpfs mounts with the same
    options, limits, security settings, the engine's init, and standard input left open, which
    the lifeline wrapper needs to keep running. The name, hostname and orchestrate's labels are
    left out, so baseline containers never pass for a run's.
    """
    security = spec["security"]
    limits = spec["limits"]
    arguments = ["run", "-d", "--interactive", "--label", label, "--network", security["network_mode"],
                 "--ipc", security["ipc_mode"], "--no-healthcheck", "--runtime", spec["runtime"]]
    arguments += [f"--cap-drop={capability}" for capability in security["cap_drop"]]
    arguments += [f"--cap-add={capability}" for capability in security["cap_add"]]
    if security["privileged"]:
        arguments.append("--privileged")
    if security["read_only_rootfs"]:
        arguments.append("--read-only")
    if security["no_new_privileges"]:
        arguments += ["--security-opt", "no-new-privileges:true"]
    # The same seccomp profile orchestrate passes, so the baseline does the same work in the engine; the CLI
    # takes a file's path and sends its content.
    arguments += ["--security-opt", f"seccomp={load_profile(Path(security['seccomp'])).path}"]
    if spec["init"]:
        arguments.append("--init")
    arguments += ["--cpus", str(limits["cpus"]), "--memory", str(limits["memory"]),
                  "--memory-swap", str(limits["memory"]), "--pids-limit", str(limits["pids"]),
                  "--log-opt", "max-size=64m", "--log-opt", "max-file=2",
                  "--user", spec["user"], "--workdir", spec["workdir"]]
    for name, value in environment_of(spec).items():
        arguments += ["--env", f"{name}={value}"]
    for mount in spec["mounts"]:
        read_only = ",readonly" if mount["read_only"] else ""
        if mount["type"] == "bind":
            arguments += ["--mount", f"type=bind,source={mount['source']},target={mount['target']}"
                          f"{read_only},bind-propagation=rprivate"]
        elif mount["read_only"]:
            arguments += ["--mount", f"type=tmpfs,target={mount['target']},tmpfs-size={mount['size']}{read_only}"]
        else:
            arguments += ["--tmpfs", f"{mount['target']}:{tmpfs_options(spec, mount)}"]
    entrypoint = spec["entrypoint"]
    # --entrypoint takes one program; the rest of the entrypoint goes in front of the command.
    return [*arguments, "--entrypoint", entrypoint[0], spec["image_id"] or spec["image"], *entrypoint[1:],
            *spec["command"]]


def sdk_create_arguments(api: docker.APIClient, spec: dict[str, Any], label: str) -> dict[str, Any]:
    """Return low-level `create_container` keyword arguments for the container `spec` describes."""
    security = spec["security"]
    limits = spec["limits"]
    host_config = api.create_host_config(
        network_mode=security["network_mode"],
        cap_drop=list(security["cap_drop"]),
        cap_add=list(security["cap_add"]) or None,
        privileged=security["privileged"],
        read_only=security["read_only_rootfs"],
        security_opt=(["no-new-privileges:true"] if security["no_new_privileges"] else [])
        + [load_profile(Path(security["seccomp"])).option],
        ipc_mode=security["ipc_mode"],
        mounts=[_sdk_mount(mount) for mount in spec["mounts"] if mount["type"] == "bind" or mount["read_only"]],
        tmpfs={mount["target"]: tmpfs_options(spec, mount) for mount in spec["mounts"]
               if mount["type"] == "tmpfs" and not mount["read_only"]},
        nano_cpus=int(limits["cpus"] * 1_000_000_000),
        mem_limit=limits["memory"],
        memswap_limit=limits["memory"],
        pids_limit=limits["pids"],
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "64m", "max-file": "2"}),
        runtime=spec["runtime"],
        init=spec["init"],
    )
    key, value = label.split("=", 1)
    return {
        "image": spec["image_id"] or spec["image"],
        "entrypoint": list(spec["entrypoint"]),
        "command": list(spec["command"]),
        "stdin_open": True,
        "detach": False,
        "user": spec["user"],
        "working_dir": spec["workdir"],
        "environment": environment_of(spec),
        "labels": {key: value},
        "network_disabled": True,
        "healthcheck": {"Test": ["NONE"]},
        "host_config": host_config,
    }


def _sdk_mount(mount: dict[str, Any]) -> docker.types.Mount:
    if mount["type"] == "bind":
        return docker.types.Mount(target=mount["target"], source=mount["source"], type="bind",
                                  read_only=mount["read_only"], propagation="rprivate")
    return docker.types.Mount(target=mount["target"], source=None, type="tmpfs", read_only=True,
                              tmpfs_size=mount["size"])


# -- report ------------------------------------------------------------------------------------------------


def target(name: str, measured: float | None, limit: float, *, unit: str, below: bool = True) -> dict[str, Any]:
    """Return one target's record: what was measured, the limit, and whether it was met.

    `below` means the measured figure must be at most `limit`; otherwise at least `limit`.
    A figure that could not be measured (None) counts as missed.
    """
    if measured is None:
        met = False
    else:
        met = measured <= limit if below else measured >= limit
    return {"target": name, "measured": measured, "limit": limit, "unit": unit,
            "comparison": "at most" if below else "at least", "pass": met}


def machine_facts(api: docker.APIClient) -> dict[str, Any]:
    """Return the facts every benchmark prints: cores, kernel, load, Python, Docker and orchestrate versions."""
    from orchestrator import __version__

    version = api.version()
    runc = next((str(item.get("Version")) for item in version.get("Components") or []
                 if item.get("Name") == "runc"), None)
    try:
        cli = docker_cli("version", "--format", "{{.Client.Version}}")
    except (SystemExit, OSError, subprocess.TimeoutExpired) as exc:
        cli = f"unavailable: {exc}"
    return {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "docker": version.get("Version"),
        "docker_cli": cli,
        "runc": runc,
        "orchestrate": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def seconds_between(start_ns: int, end_ns: int) -> float:
    return round((end_ns - start_ns) / 1e9, 3)


def parse_counts(text: str) -> list[int]:
    """Parse an option such as 1,10,30 into agent counts, each at least 1."""
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid counts {text!r}; give agent counts such as 1,10,30") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"invalid counts {text!r}; every count must be at least 1")
    return counts
