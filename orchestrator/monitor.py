"""The safety monitor: file events, the engine's event stream and posture checks, for the whole run.

Four watchers feed one report function:
- the file monitor judges every write in every workspace (conflicts, claims, escapes, quotas);
- the copy watch finds files that two agents changed in their private source copies (conflicts);
- the engine's event stream shows anyone but the orchestrator acting on a container (tampering);
- posture checks re-inspect every container every few seconds and compare it with the plan.
The monitor also publishes files that agents closed after writing, after a short quiet time, so
results reach the output tree while agents run.

The monitor only reports. The supervisor decides what a violation does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskStatus

from .activity import Activity, Listener
from .copy_watch import CopyWatch
from .errors import DockerUnavailable
from .events import EngineEvent, EventFeed, FeedGap, FeedLost, classify
from .layout import OUTPUT_TARGET
from .openfiles import open_for_writing
from .own_execs import EXEC_ACTIONS, OwnExecs
from .plan import AgentPlan, RunPlan
from .posture import posture_drift
from .runtime import Runtime
from .runtime.docker import ContainerGone, RuntimeFailure
from .violations import MONITOR_FAILURE, POSTURE_DRIFT, TAMPERING, Violation
from .workers import Workers
from .workspace_watch import FileMonitor

log = logging.getLogger(__name__)

# Maximum wait, in seconds, before a closed file is published while its agent keeps writing others.
PUBLISH_MAX_DELAY = 5.0

Report = Callable[[Violation], None]
Publish = Callable[[AgentPlan, frozenset[str]], Awaitable[None]]


class Monitor:
    def __init__(
        self,
        plan: RunPlan,
        runtime: Runtime,
        workers: Workers,
        *,
        report: Report,
        listener: Listener,
        publish: Publish | None = None,
    ) -> None:
        self.plan = plan
        self.runtime = runtime
        self.workers = workers
        self._report = report
        self._listener = listener
        self._publish = publish if plan.monitor.publish_while_running else None
        self._agents = {agent.name: agent for agent in plan.agents}
        self.files = FileMonitor(
            plan, report=report, listener=listener, publish_ready=self._ready if self._publish else None
        )
        self.copies = CopyWatch(plan, report=report)
        self.containers: dict[str, str] = {}
        self._agent_of: dict[str, str] = {}
        # Each allowlist agent's own network, shared with the broker alone: network name -> agent.
        self._egress_owner = {agent.egress.network: agent.name for agent in plan.agents if agent.egress is not None}
        self._started: set[str] = set()
        self._stopping: set[str] = set()
        self._seen_start: set[str] = set()
        self._seen_exit: set[str] = set()
        self._pending: dict[str, set[str]] = {}
        self._last_close: dict[str, float] = {}
        self._first_close: dict[str, float] = {}
        self._publish_wakeup = anyio.Event()
        self._posture_wakeup = anyio.Event()
        self._feed: EventFeed | None = None
        self._since = time.time()
        self.own_execs = OwnExecs()

    # -- calls from the supervisor -----------------------------------------------------------------------

    def container_created(self, agent: str, container_id: str) -> None:
        self.containers[agent] = container_id
        self._agent_of[container_id] = agent

    def container_started(self, agent: str) -> None:
        self._started.add(agent)

    def stopping(self, agent: str) -> None:
        """Mark an agent that the orchestrator itself is about to stop, so its kill and exit are no tampering."""
        self._stopping.add(agent)
        self.copies.stopping(agent)

    def stopping_all(self) -> None:
        self._stopping.update(self._agents)
        # Watched containers that are no agent, such as the egress broker.
        self._stopping.update(self.containers)

    def is_stopping(self, agent: str) -> bool:
        return agent in self._stopping

    def stop_publishing(self, agent: str) -> None:
        self._pending.pop(agent, None)

    def exec_announced(self, agent: str) -> None:
        """Hold `agent`'s exec events until `exec_created`: the run process is about to create an exec."""
        self.own_execs.announce(agent)

    def exec_created(self, agent: str, exec_id: str | None) -> None:
        """Accept the exec `exec_id` as the run's own (None: the create failed); report held foreign ones."""
        for event in self.own_execs.created(agent, exec_id):
            self._report(Violation(TAMPERING, agent, event.action, _exec_detail(event), event.to_json()))

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            await group.start(self.files.run)
            await group.start(self.copies.run)
            group.start_soon(self._posture_loop)
            group.start_soon(self._engine_events)
            if self._publish is not None:
                group.start_soon(self._publisher)
            task_status.started()

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()

    # -- continuous publishing ---------------------------------------------------------------------------

    def _ready(self, agent: str, paths: set[str]) -> None:
        if agent in self._stopping:
            return
        now = time.monotonic()
        if agent not in self._pending:
            self._first_close[agent] = now
        self._pending.setdefault(agent, set()).update(paths)
        self._last_close[agent] = now
        self._publish_wakeup.set()

    def _due(self, agent: str, now: float) -> bool:
        # Quiet for the debounce, or waiting too long: an agent that never pauses still gets published.
        debounce = self.plan.monitor.publish_debounce
        quiet = now - self._last_close.get(agent, 0) >= debounce
        return quiet or now - self._first_close.get(agent, now) >= max(PUBLISH_MAX_DELAY, debounce)

    async def _publisher(self) -> None:
        assert self._publish is not None
        debounce = self.plan.monitor.publish_debounce
        while True:
            await self._publish_wakeup.wait()
            self._publish_wakeup = anyio.Event()
            while self._pending:
                now = time.monotonic()
                due = [agent for agent in self._pending if self._due(agent, now)]
                if not due:
                    await anyio.sleep(debounce / 2)
                    continue
                for agent in due:
                    paths = await self._closed_by_every_writer(agent, frozenset(self._pending.pop(agent, set())))
                    if paths and agent not in self._stopping:
                        await self._publish(self._agents[agent], paths)

    async def _closed_by_every_writer(self, agent: str, paths: frozenset[str]) -> frozenset[str]:
        """Drop the paths that a process of the agent still has open for writing: they wait for their last close.

        Under gVisor the host does not see the agent's descriptors, so nothing is published before the exit.
        """
        container_id = self.containers.get(agent)
        if not paths or container_id is None or self._agents[agent].container.runtime != "runc":
            return frozenset()
        try:
            inspect = await self.workers.call(self.runtime.inspect, container_id)
        except (ContainerGone, RuntimeFailure, DockerUnavailable):
            return frozenset()
        pid = int((inspect.get("State") or {}).get("Pid") or 0)
        busy = await anyio.to_thread.run_sync(open_for_writing, pid, OUTPUT_TARGET)
        return frozenset() if busy is None else paths - busy

    # -- posture -------------------------------------------------------------------------------------------

    async def _posture_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.plan.monitor.posture_interval):
                await self._posture_wakeup.wait()
            self._posture_wakeup = anyio.Event()
            await self.check_posture()

    async def check_posture(self) -> None:
        """Re-inspect every running container and report each setting that differs from the plan."""
        for agent, container_id in list(self.containers.items()):
            if agent not in self._started or agent in self._stopping:
                continue
            try:
                inspect = await self.workers.call(self.runtime.inspect, container_id)
            except ContainerGone:
                if agent not in self._stopping:
                    self._report(Violation(TAMPERING, agent, "container", "the container was removed by someone else"))
                continue
            except (RuntimeFailure, DockerUnavailable) as exc:
                log.warning("agent %s: posture check failed: %s", agent, exc)
                continue
            if not (inspect.get("State") or {}).get("Running") or agent in self._stopping:
                continue
            for drift in posture_drift(self._agents[agent].container, inspect):
                self._report(Violation(
                    POSTURE_DRIFT, agent, drift.setting,
                    f"{drift.setting} is {drift.actual}, the plan says {drift.expected}",
                    drift.to_json(),
                ))

    # -- engine events -------------------------------------------------------------------------------------

    async def _engine_events(self) -> None:
        connect = getattr(self.runtime, "event_client", None)
        if connect is None:
            return
        # Network events of other containers pass too: one that joins an agent's egress network is tampering.
        self._feed = EventFeed(connect, watched=lambda container_id: bool(self._egress_owner)
                               or container_id in self._agent_of, since=self._since)
        try:
            async for item in self._feed:
                if isinstance(item, FeedGap):
                    self._gap(item)
                else:
                    self._engine_event(item)
        except FeedLost as exc:
            self._report(Violation(MONITOR_FAILURE, "*", "engine events", f"the engine's event stream is lost: {exc}"))
        finally:
            self._feed.close()

    def _gap(self, gap: FeedGap) -> None:
        message = f"the engine's event stream was cut ({gap.reason}); reconnected, checking every container again"
        log.warning(message)
        self._listener(Activity("warning", None, message, {"monitor": "reconnected"}))
        # Whatever happened during the gap still shows in the containers' settings.
        self._posture_wakeup.set()

    def _engine_event(self, event: EngineEvent) -> None:
        agent = self._agent_of.get(event.container_id)
        if agent is None:
            self._foreign_event(event)
            return
        if event.kind == "container" and event.action == "start":
            if agent in self._seen_start:
                self._report(Violation(TAMPERING, agent, "start", "the container was started again by someone else",
                                       event.to_json()))
            self._seen_start.add(agent)
            return
        if event.kind == "container" and event.action == "die":
            self._seen_exit.add(agent)
        exec_event = event.kind == "container" and event.action in EXEC_ACTIONS
        if exec_event and self.own_execs.judge(agent, event) != "foreign":
            return
        # The orchestrator's own attach and network setup come before the start event in the stream, so the
        # stream's order separates them from anyone else's. The start call may return after its event arrives.
        verdict = classify(event, started=agent in self._seen_start, stopping=agent in self._stopping,
                           exited=agent in self._seen_exit)
        if verdict is None:
            return
        kind, detail = verdict
        if kind == "oom":
            self._listener(Activity("engine", agent, f"out of memory: {detail}", {"action": event.action}))
            return
        self._report(Violation(TAMPERING, agent, event.action, detail, event.to_json()))

    def _foreign_event(self, event: EngineEvent) -> None:
        """Report a container outside the run joining an agent's egress network.

        That network is meant to hold the agent and the broker alone: any other container on it can reach the
        agent, and the agent it, past the broker. Such a connect changes none of the agent's own settings.
        """
        if event.kind != "network" or event.action != "connect":
            return
        owner = self._egress_owner.get(event.attributes.get("name", ""))
        if owner is None or owner in self._stopping:
            return
        detail = (f"container {event.container_id[:12]} outside the run joined the agent's egress network "
                  f"'{event.attributes['name']}', which reaches the agent past the broker")
        self._report(Violation(TAMPERING, owner, "network connect", detail, event.to_json()))


def _exec_detail(event: EngineEvent) -> str:
    # A held exec event is described as `classify` describes any exec it reports.
    verdict = classify(event, started=True, stopping=False)
    return verdict[1] if verdict is not None else event.action
