"""`orchestrate logs`: an agent's output, from the engine while it runs and from the run folder after.

Reading logs is no action on the container that the monitor reports, so it is
safe on a live run. A followed stream is closed as soon as its container stops,
even when the engine keeps the connection open, so `logs -f`
ends when the agent does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .plan import LABEL_AGENT, LABEL_RUN, RUN_ID_PATTERN
from .runtime.docker import DockerRuntime

# How often a follower checks that its container still runs, since the stream alone may not end.
STATUS_INTERVAL = 0.5
# After the container stopped, the stream is closed once the engine has sent nothing for this long (a large
# last output is still being delivered), or at the latest after DRAIN_LIMIT.
QUIET_AFTER_STOP = 1.0
DRAIN_LIMIT = 60.0

Write = Callable[[str, bytes], None]


@dataclass(frozen=True)
class AgentSource:
    agent: str
    # The agent's container while the engine still has it; its saved output once the run removed it.
    container_id: str | None
    saved: Path


def agent_sources(runtime: DockerRuntime, runs_root: Path, run_id: str, agent: str | None) -> list[AgentSource]:
    """Find where each agent's output is; raise InputError naming what exists when nothing matches."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from `orchestrate status --runs-dir {runs_root}`")
    run_dir = runs_root / run_id
    # Only agents: the run's egress broker carries the run label but no agent label.
    containers = {
        (item.get("Labels") or {}).get(LABEL_AGENT, ""): str(item["Id"])
        for item in runtime.client.api.containers(all=True, filters={"label": [f"{LABEL_RUN}={run_id}", LABEL_AGENT]})
    }
    names = sorted(set(containers) | set(_planned_agents(run_dir)))
    if not names:
        raise InputError(
            f"run {run_id} is unknown: {run_dir} has no plan and no container has its label; list runs with "
            f"`orchestrate status --runs-dir {runs_root}`"
        )
    if agent is not None:
        if agent not in names:
            raise InputError(f"run {run_id} has no agent '{agent}'; its agents are: {', '.join(names)}")
        names = [agent]
    return [AgentSource(name, containers.get(name), _saved_output(run_dir, name)) for name in names]


def _saved_output(run_dir: Path, agent: str) -> Path:
    # An interactive agent's program writes to its terminal, which the run process copies to this file.
    terminal = run_dir / "agents" / f"{agent}.terminal.log"
    return terminal if terminal.is_file() else run_dir / "agents" / f"{agent}.log"


def _planned_agents(run_dir: Path) -> list[str]:
    try:
        plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(item["name"]) for item in plan.get("agents", []) if isinstance(item, dict) and "name" in item]


def show(runtime: DockerRuntime, sources: list[AgentSource], write: Write, *, follow: bool) -> None:
    """Write every agent's output; with `follow`, keep writing until every followed agent has exited."""
    threads = []
    for source in sources:
        lines = _lines_of(runtime, source, follow=follow)
        if follow and source.container_id is not None:
            thread = threading.Thread(target=_pump, args=(source.agent, lines, write), daemon=True,
                                      name=f"orchestrate-logs-{source.agent}")
            thread.start()
            threads.append(thread)
        else:
            _pump(source.agent, lines, write)
    for thread in threads:
        thread.join()


def _pump(agent: str, lines: Iterable[bytes], write: Write) -> None:
    for line in lines:
        write(agent, line)


def _lines_of(runtime: DockerRuntime, source: AgentSource, *, follow: bool) -> Iterator[bytes]:
    if source.container_id is None or (not follow and source.saved.is_file()):
        return _saved_lines(source.saved)
    if source.saved.name.endswith(".terminal.log"):
        return _growing_file_lines(runtime, source)
    return _engine_lines(runtime, source, follow=follow)


def _growing_file_lines(runtime: DockerRuntime, source: AgentSource) -> Iterator[bytes]:
    """Yield a terminal transcript as it grows, until its container has stopped and the file is quiet."""
    stopped_at: float | None = None
    next_check = time.monotonic()
    with source.saved.open("rb") as transcript:
        while True:
            chunk = transcript.read(65536)
            if chunk:
                yield chunk
                continue
            if stopped_at is None and time.monotonic() >= next_check:
                next_check = time.monotonic() + STATUS_INTERVAL
                if not _running(runtime, str(source.container_id)):
                    stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at >= QUIET_AFTER_STOP:
                return
            time.sleep(STATUS_INTERVAL / 5)


def _running(runtime: DockerRuntime, container_id: str) -> bool:
    try:
        return bool(runtime.client.api.inspect_container(container_id)["State"]["Running"])
    except Exception:  # noqa: BLE001 - a container that is gone is not running.
        return False


def _saved_lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as saved:
            yield from saved
    except FileNotFoundError:
        return


def _engine_lines(runtime: DockerRuntime, source: AgentSource, *, follow: bool) -> Iterator[bytes]:
    api = runtime.client.api
    assert source.container_id is not None
    try:
        stream: Any = api.logs(source.container_id, stdout=True, stderr=True, stream=True, follow=follow)
    except Exception:  # noqa: BLE001 - the container went between the listing and this call.
        yield from _saved_lines(source.saved)
        return
    stopped = threading.Event()
    last_data = [time.monotonic()]
    if follow:
        watcher = threading.Thread(target=_close_when_stopped, args=(runtime, source, stream, stopped, last_data),
                                   daemon=True)
        watcher.start()
    try:
        pending = bytearray()
        for chunk in stream:
            last_data[0] = time.monotonic()
            pending += chunk
            end = pending.rfind(b"\n")
            if end >= 0:
                yield bytes(pending[:end + 1])
                del pending[:end + 1]
        if pending:
            yield bytes(pending)
    except Exception:  # noqa: BLE001 - a stream closed under it by the watcher ends like any other.
        return
    finally:
        stopped.set()
        _close(stream)


def _close_when_stopped(
    runtime: DockerRuntime, source: AgentSource, stream: Any, stopped: threading.Event, last_data: list[float]
) -> None:
    while not stopped.wait(STATUS_INTERVAL):
        try:
            running = runtime.client.api.inspect_container(str(source.container_id))["State"]["Running"]
        except Exception:  # noqa: BLE001 - a container that is gone is not running.
            running = False
        if not running:
            # The engine may still be sending the last output: wait for it to go quiet, then end the stream.
            deadline = time.monotonic() + DRAIN_LIMIT
            while not stopped.wait(STATUS_INTERVAL / 2):
                if time.monotonic() - last_data[0] >= QUIET_AFTER_STOP or time.monotonic() >= deadline:
                    _close(stream)
                    return
            return


def _close(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001, S110 - closing twice or a closed socket is fine.
        pass
