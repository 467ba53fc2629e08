"""`orchestrate demo`: show a newcomer each boundary of the sandbox holding, in well under a minute.

The demo starts a canary server on an internal Docker network of its own and
proves from a control container on that network that the canary replies, so
a blocked attempt means the sandbox blocked it. Then it runs one agent
through the product's real path (a manifest, the plan, the supervisor) whose
command is a probe that tries to cross each boundary. Each attempt is shown
as it arrives, with a sentence on why it held. The probe aims only at the
canary, so nothing leaves the machine. Everything the demo creates is
removed at the end, on Ctrl-C too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import demo_probe
from .demo_testbed import Canary, TestBed, parse_lines
from .errors import Interrupted, OrchestrateError
from .plan import LABEL_RUN
from .runtime.docker import DockerRuntime, RuntimeFailure

log = logging.getLogger(__name__)

SECRET_NAME = "ORCHESTRATE_DEMO_SECRET"
RESULTS_FILE = "demo-results.jsonl"
AGENT_TIMEOUT = "60s"
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Boundary:
    title: str
    # Whether the attempt must succeed for the boundary to hold (only the workspace write must).
    attempt_should_succeed: bool
    why: str


NETWORK_ATTEMPTS = ("tcp", "udp", "dns", "icmp", "ipv6")

BOUNDARIES = {
    "tcp": Boundary("TCP to the canary", False,
                    "The agent's network namespace has only a loopback interface and no route, so TCP cannot leave."),
    "udp": Boundary("UDP to the canary", False, "Datagrams have no interface to leave by either."),
    "dns": Boundary("DNS query to the canary", False,
                    "Lookups are UDP too, so the agent can neither resolve names nor tunnel data through DNS."),
    "icmp": Boundary("ICMP echo to the canary", False, "Even an unprivileged ping socket finds no route out."),
    "ipv6": Boundary("IPv6 to the canary", False, "The only IPv6 address inside is ::1, and there is no IPv6 route."),
    "raw-socket": Boundary("raw and packet sockets", False,
                           "Every capability is dropped, so without CAP_NET_RAW the kernel refuses raw sockets."),
    "root": Boundary("root inside", False, "The agent runs as an unprivileged UID, never as root."),
    "sudo": Boundary("sudo or setuid programs", False,
                     "The image has none, and no-new-privileges keeps any setuid program from raising privileges."),
    "docker-socket": Boundary("Docker socket", False,
                              "The engine's socket is never mounted, so the agent cannot start containers."),
    "write-source": Boundary("write to the source", False,
                             "The source is mounted read-only: the agent reads your code but cannot change it."),
    "write-workspace": Boundary("write to its own workspace", True,
                                "The agent writes into its private workspace, from which orchestrate publishes."),
    "secret": Boundary("a secret in orchestrate's environment", False,
                       "Host variables reach an agent only when the manifest names them, and this one is not named."),
}

CONTROL_WHY = "A container on the canary's network reaches it, so a blocked attempt below is the sandbox's doing."


@dataclass(frozen=True)
class Row:
    """One attempt and its verdict."""

    name: str
    # "control" for the control container, "agent" for the sandboxed agent.
    subject: str
    title: str
    held: bool
    detail: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "title": self.title, "held": self.held,
                "detail": self.detail, "why": self.why}


@dataclass
class DemoResult:
    canary: Canary | None = None
    run_id: str | None = None
    control: list[Row] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    # Problems that invalidate the demo: an agent that did not finish cleanly, a leftover that would not go.
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        expected = set(BOUNDARIES) - ({"ipv6"} if self.canary is not None and not self.canary.ipv6 else set())
        shown = {row.name for row in self.rows}
        return (not self.problems and expected <= shown and all(row.held for row in self.control + self.rows)
                and bool(self.control))

    def to_json(self) -> dict[str, Any]:
        canary = None
        if self.canary is not None:
            canary = {"network": self.canary.network, "ipv4": self.canary.ipv4, "ipv6": self.canary.ipv6}
        return {
            "ok": self.ok,
            "canary": canary,
            "run_id": self.run_id,
            "control": [row.to_json() for row in self.control],
            "rows": [row.to_json() for row in self.rows],
            "problems": self.problems,
            "seconds": round(self.seconds, 2),
        }


LineSink = Callable[[str], None]


def row_text(row: Row) -> str:
    mark = "held"
    if row.subject == "control":
        mark = "reached"
    elif BOUNDARIES[row.name].attempt_should_succeed:
        mark = "works"
    if not row.held:
        mark = "FAILED"
    return f"{mark:<8} {row.title:<38} {row.detail}\n         {row.why}"


def run_demo(runtime: DockerRuntime, *, on_line: LineSink | None = None) -> DemoResult:
    """Run the whole demo and return every row; `on_line` receives the text to show as it happens."""
    show = on_line or (lambda _line: None)
    started = time.monotonic()
    result = DemoResult()
    bed = TestBed(runtime.client, secrets.token_hex(4))
    bed.check_image()
    try:
        with _stop_signals_raise():
            _run_steps(runtime, bed, result, show)
    finally:
        with _signals_deferred():
            problems = bed.remove()
            if result.run_id is not None:
                problems += _remove_run_containers(runtime, result.run_id)
        result.problems.extend(f"left behind: {problem}" for problem in problems)
        result.seconds = time.monotonic() - started
    verdict = "every boundary held" if result.ok else "NOT every boundary held: " + "; ".join(
        [row.title for row in result.control + result.rows if not row.held] + result.problems)
    show(f"\n{verdict} ({result.seconds:.1f} s); the demo's network and containers are removed")
    return result


def _run_steps(runtime: DockerRuntime, bed: TestBed, result: DemoResult, show: LineSink) -> None:
    show("Starting a canary server (TCP, UDP, DNS) on an internal Docker network of the demo's own...")
    canary = bed.start_canary()
    result.canary = canary
    show(f"canary at {canary.ipv4}" + (f" and {canary.ipv6}" if canary.ipv6 else "") + f" on {canary.network}\n")

    show("A control container on the same network tries to reach it:")
    for item in bed.run_control(canary):
        boundary = BOUNDARIES.get(str(item["name"]))
        if boundary is None:
            continue
        row = Row(str(item["name"]), "control", boundary.title, bool(item["ok"]), str(item.get("detail")),
                  CONTROL_WHY)
        result.control.append(row)
        show(row_text(row))

    show("\nOne sandboxed agent, started by orchestrate like any other, tries every boundary:")
    _run_agent(runtime, canary, result, show)


def _run_agent(runtime: DockerRuntime, canary: Canary, result: DemoResult, show: LineSink) -> None:
    from .manifest import load_manifest
    from .runner import execute, plan_manifest

    with tempfile.TemporaryDirectory(prefix="orchestrate-demo-") as scratch:
        root = Path(scratch)
        secret = secrets.token_urlsafe(24)
        manifest = _write_project(root, canary, secret)
        plan = plan_manifest(load_manifest(manifest), runtime, runs_root=root / "runs")
        result.run_id = plan.run_id
        results_path = plan.agents[0].workspace / RESULTS_FILE

        follower = _Follower(results_path, lambda item: _show_agent_row(item, result, show))
        follower.start()
        try:
            with _secret_in_environment(secret), _quiet_run_logs():
                run = execute(plan, runtime, grace=0.5)
        finally:
            follower.stop()
        if run.interrupted_by is not None:
            raise Interrupted(f"the demo was interrupted by {run.interrupted_by}")
        agent = run.agents[0]
        if run.exit_code != 0:
            # The run folder goes with the scratch folder, so the end of the agent's output is kept here.
            try:
                tail = agent.log_path.read_text(encoding="utf-8", errors="replace")[-600:]
            except OSError:
                tail = "(no output saved)"
            result.problems.append(f"the probe agent ended {agent.state} (exit code {agent.exit_code}"
                                   f"{'; ' + agent.message if agent.message else ''}); the end of its output: {tail!r}")


def _write_project(root: Path, canary: Canary, secret: str) -> Path:
    source = root / "src"
    source.mkdir()
    (source / "demo_probe.py").write_text(Path(demo_probe.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    (source / "README.txt").write_text("The demo's source folder, mounted read-only.\n", encoding="utf-8")
    command = ["python3", "/workspace/src/demo_probe.py", "--canary", canary.ipv4,
               "--results", f"/workspace/output/{RESULTS_FILE}", "--secret-name", SECRET_NAME,
               "--secret-sha256", hashlib.sha256(secret.encode()).hexdigest()]
    if canary.ipv6:
        command += ["--canary6", canary.ipv6]
    document = {
        "version": 1,
        "name": "demo",
        "description": "orchestrate demo: one agent probes every boundary of its sandbox",
        "source": "src",
        "output": "generated",
        "agents": [{"name": "probe", "command": command, "timeout": AGENT_TIMEOUT,
                    "resources": {"memory": "256m", "pids": 64}}],
    }
    manifest = root / "demo.yaml"
    manifest.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return manifest


def _show_agent_row(item: dict[str, Any], result: DemoResult, show: LineSink) -> None:
    name = str(item["name"])
    boundary = BOUNDARIES.get(name)
    if boundary is None or any(row.name == name for row in result.rows):
        return
    held = bool(item["ok"]) == boundary.attempt_should_succeed
    row = Row(name, "agent", boundary.title, held, str(item.get("detail")), boundary.why)
    result.rows.append(row)
    show(row_text(row))


class _Follower:
    """Reads the probe's results file from the agent's workspace on the host while the run goes on."""

    def __init__(self, path: Path, on_item: Callable[[dict[str, Any]], None]) -> None:
        self._path = path
        self._on_item = on_item
        self._offset = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="demo-results", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        # The last lines may have arrived after the final poll.
        self._read()

    def _follow(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            self._read()

    def _read(self) -> None:
        try:
            with self._path.open("rb") as results:
                results.seek(self._offset)
                data = results.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for item in parse_lines(complete.decode("utf-8", errors="replace")):
            self._on_item(item)


@contextmanager
def _secret_in_environment(value: str) -> Iterator[None]:
    """Put a fake secret into this process's environment, which the run's agents must not receive."""
    previous = os.environ.get(SECRET_NAME)
    os.environ[SECRET_NAME] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SECRET_NAME, None)
        else:
            os.environ[SECRET_NAME] = previous


@contextmanager
def _quiet_run_logs() -> Iterator[None]:
    # The run's own lifecycle lines would interleave with the table; warnings still show.
    logger = logging.getLogger("orchestrator")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, like SIGINT, so the cleanup runs for them too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_number: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP while the cleanup runs; they arrive when it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _remove_run_containers(runtime: DockerRuntime, run_id: str) -> list[str]:
    """Remove any container of the demo's run that the run itself did not remove."""
    problems = []
    for container_id in runtime.list_labelled({LABEL_RUN: run_id}):
        try:
            runtime.remove(container_id)
        except (RuntimeFailure, OrchestrateError) as exc:
            problems.append(f"container {container_id[:12]}: {exc}")
    return problems

