"""Run a plan: one task per agent, time limits on the orchestrator's clock, evidence before removal.

Each agent task creates its container, starts it, checks that its limits are
in force, and waits for it to exit or for its time limit. Then, shielded from
cancellation, it stops the container if needed and saves its exit state,
inspect output and logs. Only after that does it remove the container. SIGINT or SIGTERM cancels every agent task; a
second one skips the grace period. A final sweep by label stops any container
of the run that a task did not get to record.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from . import workspace
from .activity import Activity, Listener, ignore
from .attached_log import ACTION_FIELD
from .audit import AuditLog
from .control import ControlServer
from .egress import BrokerStartError, EgressBroker, NetworkRuntime
from .egress_events import audit_fields, violation_for
from .errors import DockerUnavailable, OrchestrateError
from .limits import is_dropped_limit, limit_problem
from .liveview import AgentRow, LiveTable, elapsed
from .monitor import Monitor
from .plan import LABEL_RUN, AgentPlan, RunPlan
from .publish import PublishError, PublishReport, check_workspace, publish_agent
from .publishing import audit_report, publish_request
from .results import AgentResult, RunResult, printable
from .run_copies import prepare_run_copies, snapshot_run
from .runtime import Lifeline, Runtime
from .runtime.docker import ContainerGone, RuntimeFailure
from .runtime.inspection import security_summary
from .sessions import SessionHost, SessionRefused
from .shutdown import DEFAULT_GRACE, stop_all, stop_container
from .status import RunLock
from .violations import BROKER_FAILURE, EGRESS_DENIED, Violation
from .workers import Workers

log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 64 * 1024 * 1024
EVIDENCE_DEADLINE = 120.0
WAIT_RECONNECT_ATTEMPTS = 30
LIMIT_READ_ATTEMPTS = 3
LIMIT_READ_RETRY = 0.1
# The name the monitor reports the egress broker's container under; no agent name can contain a space.
BROKER_WATCH_NAME = "egress broker"
# Denied requests of one agent that become violations; later ones are only audited.
MAX_DENIED_VIOLATIONS = 20


class Supervisor:
    def __init__(
        self,
        plan: RunPlan,
        runtime: Runtime,
        environment: dict[str, str],
        *,
        grace: float = DEFAULT_GRACE,
        handle_signals: bool = True,
        listener: Listener = ignore,
        table: LiveTable | None = None,
        terminal_size: tuple[int, int] | None = None,
        control_ready: Callable[[Path], None] | None = None,
    ) -> None:
        self.plan = plan
        self.runtime = runtime
        self.environment = environment
        # The grace period is cut so that SIGTERM, the grace period and SIGKILL fit the deadline.
        self.grace = min(grace, plan.shutdown.deadline / 2)
        self.listener = listener
        self.table = table
        self.handle_signals = handle_signals
        self.workers = Workers(len(plan.agents))
        self.force = anyio.Event()
        self.results = {agent.name: AgentResult.pending(agent) for agent in plan.agents}
        self.interrupted_by: str | None = None
        self._containers: dict[str, str] = {}
        self._agents_scope: anyio.CancelScope | None = None
        self._log: AuditLog | None = None
        self._audit_failed: str | None = None
        self._lifelines: dict[str, Lifeline] = {}
        # Stopped containers kept because their evidence could not be saved; the sweep leaves them.
        self._kept: set[str] = set()
        self.monitor = Monitor(plan, runtime, self.workers, report=self._on_violation, listener=self._notify,
                               publish=self._publish_closed)
        self.violations: list[Violation] = []
        # The violation whose policy stopped the whole run, and how long the stop took.
        self.stopped_by: Violation | None = None
        self.stop_seconds: float | None = None
        self._halted = False
        # Set when an emergency stop has every container stopped; evidence work waits for it.
        self._stop_done = anyio.Event()
        self._first_started = anyio.Event()
        self._background: anyio.abc.TaskGroup | None = None
        # `orchestrate exec` and `attach` reach the run through this socket; only this process creates execs.
        self.sessions = SessionHost(plan, runtime, self.workers, self.monitor, audit=self._audit,
                                    containers=self._containers, terminal_size=terminal_size)
        self.control = ControlServer(plan.run_dir, self.sessions, audit=self._audit, ready=control_ready)
        self._egress: EgressBroker | None = None
        self._egress_error: str | None = None
        self._denied: dict[str, int] = {}

    def _audit(self, kind: str, **fields: object) -> None:
        if self._log is None:
            return
        try:
            self._log.append(kind, **fields)
        except (OSError, ValueError) as exc:
            # A full disk must not stop the shutdown, so the log ends here and result.json records why.
            log.error("the audit log %s could not be written (%s); it ends here", self._log.path, exc)
            self._audit_failed = str(exc)
            self._log = None

    async def run(self) -> RunResult:
        started = time.monotonic()
        workspace.prepare(self.plan)
        copies = prepare_run_copies(self.plan)
        # Held until this process ends, so `orchestrate status` can tell a live run from a dead one.
        run_lock = RunLock(self.plan.run_dir)
        _write_json(self.plan.run_dir / "plan.json", self.plan.model_dump(mode="json"))
        self._log = AuditLog.create(self.plan.run_dir / "audit.jsonl", run_id=self.plan.run_id)
        self._audit_run_start()
        if copies is not None:
            self._audit("source-copies", copy_kind=copies.kind, git_dir=str(copies.git_dir),
                        base_commit=copies.base_commit, agents=[agent.name for agent in self.plan.agents])
        count = len(self.plan.agents)
        log.info("run %s started with %d agent%s in %s", self.plan.run_id, count, "" if count == 1 else "s",
                 self.plan.run_dir)

        await self.control.open()
        async with anyio.create_task_group() as outer:
            self._background = outer
            if self.handle_signals:
                # start(), not start_soon(): the handlers are in place before any container exists.
                await outer.start(self._watch_signals)
            # The first scan and every watch are in place before any agent starts writing.
            await outer.start(self.monitor.run)
            await outer.start(self.sessions.run)
            await outer.start(self.control.serve)
            if self.table is not None:
                outer.start_soon(self.table.run, self.snapshot)
            try:
                await self._run_agents()
            finally:
                with anyio.CancelScope(shield=True):
                    self.monitor.stopping_all()
                    if self._egress is not None:
                        await self._egress.stop()
                    await self._sweep_leftovers()
                    self.monitor.close()
                outer.cancel_scope.cancel()

        if self.violations:
            await self._collect_evidence()
        if self.plan.source_mode == "copy":
            await anyio.to_thread.run_sync(snapshot_run, self.plan)

        result = RunResult(
            run_id=self.plan.run_id,
            run_dir=self.plan.run_dir,
            agents=[self.results[agent.name] for agent in self.plan.agents],
            interrupted_by=self.interrupted_by,
            seconds=time.monotonic() - started,
            stopped_by=None if self.stopped_by is None else self.stopped_by.to_json(),
            stop_seconds=self.stop_seconds,
            violations=len(self.violations),
        )
        self._audit("run-end", exit_code=result.exit_code, interrupted_by=self.interrupted_by,
                    states={agent.name: agent.state for agent in result.agents})
        if self._log is not None:
            result.audit_head = self._log.last_hash
            self._log.close()
        result.audit_problem = self._audit_failed
        try:
            _write_json(self.plan.run_dir / "result.json", result.to_json())
        except OSError as exc:
            log.error("the result could not be written to %s: %s", self.plan.run_dir / "result.json", exc)
        run_lock.release()
        log.info("run %s ended in %.2f s: %s", self.plan.run_id, result.seconds, result.headline())
        if result.audit_head:
            # Printed, so CI logs keep a copy of the anchor outside the run folder.
            log.info("audit log head: %s (check with `orchestrate audit verify %s --head %s`)",
                     result.audit_head, self.plan.run_dir, result.audit_head)
        return result

    def _audit_run_start(self) -> None:
        plan = self.plan
        self._audit(
            "run-start",
            manifest=str(plan.manifest),
            manifest_sha256=plan.manifest_sha256,
            source=str(plan.source),
            output=str(plan.output),
            agents=[
                {
                    "name": agent.name,
                    "image": agent.container.image,
                    "image_id": agent.container.image_id,
                    "command": list(agent.container.command),
                    "env_names": list(agent.container.env_names),
                    "limits": agent.container.limits.model_dump(),
                    "timeout": agent.timeout,
                    "writes": list(agent.writes),
                }
                for agent in plan.agents
            ],
            shared=[item.model_dump() for item in plan.shared],
            weakenings=list(plan.weakenings),
        )
        for weakening in plan.weakenings:
            log.warning("weakened: %s", weakening)

    async def _run_agents(self) -> None:
        with anyio.CancelScope() as scope:
            self._agents_scope = scope
            if self.plan.broker is not None:
                await self._start_egress()
            async with anyio.create_task_group() as group:
                for agent in self.plan.agents:
                    group.start_soon(self._supervise, agent)

    async def _start_egress(self) -> None:
        """Start the egress broker; when it fails, every agent with network access fails instead of starting."""
        assert self._background is not None
        if not isinstance(self.runtime, NetworkRuntime):
            self._egress_error = "this container runtime cannot create networks for the egress broker"
            return
        self._egress = EgressBroker(
            self.plan, self.runtime, self.workers, self.environment, on_event=self._on_egress_event,
            on_exit=self._on_broker_exit,
            # Watched like an agent's container: an exec into the broker, which holds the keys, is tampering.
            on_created=lambda container_id: self.monitor.container_created(BROKER_WATCH_NAME, container_id),
        )
        try:
            await self._egress.start(self._background)
        except (BrokerStartError, DockerUnavailable) as exc:
            self._egress_error = str(exc)
            log.error("%s", exc)
            self._audit("egress-failed", error=str(exc))
            return
        self._audit("egress-start", container=self._egress.container_id, networks={
            agent.name: agent.egress.network for agent in self.plan.agents if agent.egress is not None
        }, secret_sources=[
            f"agent {agent.name}: {secret.name} from {secret.source()}"
            for agent in self.plan.agents if agent.egress is not None for secret in agent.egress.secrets
        ])

    def _on_egress_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "request":
            self._audit("egress-request", **audit_fields(event))
        elif kind == "dns":
            # A lookup the broker refused: Docker's resolver forwarded a name it does not know.
            self._audit("egress-dns", agent=printable(str(event.get("agent")))[:63],
                        name=printable(str(event.get("name")))[:255])
        elif kind == "warning":
            log.warning("egress broker: %s", printable(str(event.get("message")))[:500])
        violation = violation_for(event)
        if violation is None:
            return
        if violation.kind == EGRESS_DENIED:
            count = self._denied[violation.agent] = self._denied.get(violation.agent, 0) + 1
            if count > MAX_DENIED_VIOLATIONS:
                return
        self._on_violation(violation)

    def _on_broker_exit(self, message: str) -> None:
        # `orchestrate stop` kills the run's containers, the broker included, when this process does not end in
        # time (such as a stopped process). That exit is the user's stop, not a broker failure.
        if self.interrupted_by is not None or (self.plan.run_dir / "stop-request.json").exists():
            log.warning("the egress broker exited while the run was being stopped: %s", message)
            self._audit("broker-exit", reason=message)
            return
        self._on_violation(Violation(BROKER_FAILURE, "*", "egress broker", message))

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Every signal whose default action ends the process is caught, so none of them orphans the agents:
        # SIGHUP comes from a closed terminal or SSH session, the others from scripts and supervisors.
        stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                    signal.SIGALRM)
        with anyio.open_signal_receiver(*stopping) as signals:
            task_status.started()
            async for received in signals:
                name = signal.Signals(received).name
                if self.interrupted_by is None:
                    self.interrupted_by = name
                    self._audit_stop_request(name)
                    log.warning("%s received: stopping every agent (send it again to kill at once)", name)
                    self._notify(Activity("shutdown", None, f"{name} received: stopping every agent"))
                    self.monitor.stopping_all()
                    if self._agents_scope is not None:
                        self._agents_scope.cancel()
                else:
                    log.warning("%s received again: killing every agent now", name)
                    self.force.set()

    async def _supervise(self, agent: AgentPlan) -> None:
        result = self.results[agent.name]
        try:
            if agent.egress is not None and self._egress_error is not None:
                result.fail("error", f"not started: {self._egress_error}")
            elif await self._launch(agent, result):
                await self._await_exit(agent, result)
        except anyio.get_cancelled_exc_class():
            result.interrupted = True
            raise
        except DockerUnavailable as exc:
            result.fail("error", str(exc))
        finally:
            # From here on the orchestrator stops and removes the container: its own events are no tampering.
            self.monitor.stopping(agent.name)
            container_id = self._containers.get(agent.name)
            if container_id is not None:
                with anyio.move_on_after(EVIDENCE_DEADLINE, shield=True):
                    if self.stopped_by is not None:
                        # Saving logs and removing containers would take threads and engine time from the
                        # kills still in flight; evidence never delays the stop.
                        await self._stop_done.wait()
                    await self._finish(agent, container_id, result)
            lifeline = self._lifelines.pop(agent.name, None)
            if lifeline is not None:
                _close_quietly(lifeline)
            result.settle()
            self._audit("agent-exit", agent=agent.name, **result.audit_fields())
            log.info("agent %s: %s", agent.name, result.describe())
            self._notify(Activity("agent-exited", agent.name, result.describe(), {"state": result.state}))

    async def _launch(self, agent: AgentPlan, result: AgentResult) -> bool:
        spec = agent.container

        def create_and_record() -> list[str]:
            if agent.egress is not None and self._egress is not None:
                created = self.runtime.create(spec, self.environment, **self._egress.create_options(agent.name))
            else:
                created = self.runtime.create(spec, self.environment)
            # Recorded inside the worker thread, so a cancellation cannot lose the id.
            self._containers[agent.name] = created.container_id
            self.monitor.container_created(agent.name, created.container_id)
            return list(created.warnings)

        # The first agent goes to the engine alone: with thirty creates at once each call takes longer, and
        # the first agent would start late. The others wait only until it runs, about a tenth of a second.
        first = agent.name == self.plan.agents[0].name
        if not first:
            await self._first_started.wait()
        try:
            return await self._create_and_start(agent, result, create_and_record)
        finally:
            if first:
                self._first_started.set()

    async def _create_and_start(
        self, agent: AgentPlan, result: AgentResult, create_and_record: Callable[[], list[str]]
    ) -> bool:
        try:
            warnings = await self.workers.create_call(create_and_record)
        except RuntimeFailure as exc:
            result.fail("error", str(exc))
            return False

        dropped = [warning for warning in warnings if is_dropped_limit(warning)]
        for warning in warnings:
            log.warning("agent %s: the engine warned: %s", agent.name, warning)
        if dropped:
            result.fail("error", f"the engine did not apply a limit ({dropped[0]}); the agent was not started")
            return False

        try:
            # Attached before the start, so the agent never runs without its dead-man's switch.
            self._lifelines[agent.name] = await self.workers.call(
                self.runtime.attach_lifeline, self._containers[agent.name]
            )
            if self._halted:
                result.interrupted = True
                return False
            # Told before the start, so the start's own events are already the orchestrator's.
            self.monitor.container_started(agent.name)
            await self.workers.call(self.runtime.start, self._containers[agent.name])
        except (RuntimeFailure, ContainerGone) as exc:
            result.fail("error", str(exc))
            return False
        result.mark_started()
        self._audit("agent-start", agent=agent.name, container=self._containers[agent.name])
        log.info("agent %s started in container %s", agent.name, self._containers[agent.name][:12])
        self._notify(Activity("agent-started", agent.name, f"started in container {self._containers[agent.name][:12]}"))

        if not await self._verify_limits(agent, result):
            return False
        return agent.session_command is None or await self._open_terminal(agent, result)

    async def _open_terminal(self, agent: AgentPlan, result: AgentResult) -> bool:
        """Start an interactive agent's program in its terminal; stop the agent when that fails."""
        container_id = self._containers[agent.name]
        try:
            await self.sessions.open_interactive(agent, container_id)
        except (RuntimeFailure, ContainerGone, DockerUnavailable, SessionRefused) as exc:
            result.fail("error", f"the agent's terminal could not be opened: {exc}")
            self.monitor.stopping(agent.name)
            await stop_container(self.runtime, self.workers, container_id, grace=0, force=self.force)
            return False
        return True

    async def _verify_limits(self, agent: AgentPlan, result: AgentResult) -> bool:
        """Read the cgroup back; stop the agent at once when a limit is not in force."""
        container_id = self._containers[agent.name]
        try:
            for attempt in range(LIMIT_READ_ATTEMPTS):
                inspect = await self.workers.call(self.runtime.inspect, container_id)
                limits = await self.workers.call(self.runtime.effective_limits, inspect)
                running = bool((inspect.get("State") or {}).get("Running"))
                # On a loaded machine a read can miss; only a container that still runs is worth a retry.
                if None not in (limits.pids, limits.memory) or not running or attempt == LIMIT_READ_ATTEMPTS - 1:
                    break
                await anyio.sleep(LIMIT_READ_RETRY)
        except (RuntimeFailure, ContainerGone):
            return True  # The container already exited; its exit is handled as usual.
        self._audit("container-started", agent=agent.name, container=container_id,
                    security=security_summary(inspect))
        result.effective_pids = limits.pids
        result.effective_memory = limits.memory
        result.effective_cpus = limits.cpus

        problem = limit_problem(agent, limits.pids, limits.memory, limits.cpus)
        if problem is None:
            return True
        if problem.startswith("unverified"):
            # An agent that already exited has no cgroup left to read; that is no warning.
            if await self._still_running(container_id):
                log.warning("agent %s: %s", agent.name, problem)
                self._audit("warning", agent=agent.name, message=problem)
            return True
        result.fail("error", f"{problem}; the agent was stopped")
        self._audit("violation", agent=agent.name, violation="limit-not-enforced", detail=problem)
        self.monitor.stopping(agent.name)
        await stop_container(self.runtime, self.workers, container_id, grace=0, force=self.force)
        return False

    async def _still_running(self, container_id: str) -> bool:
        try:
            status = await self.workers.call(self.runtime.status, container_id)
        except (RuntimeFailure, ContainerGone):
            return False
        return status.running

    async def _await_exit(self, agent: AgentPlan, result: AgentResult) -> None:
        container_id = self._containers[agent.name]
        with anyio.move_on_after(agent.timeout) as timer:
            for _attempt in range(WAIT_RECONNECT_ATTEMPTS):
                try:
                    await self.workers.block(self.runtime.wait, container_id)
                    result.mark_ended()
                    return
                except DockerUnavailable as exc:
                    # The wait's connection dropped; the container may still run, so wait again.
                    log.warning("agent %s: lost the wait on its container (%s); waiting again", agent.name, exc)
                    await anyio.sleep(1)
                except ContainerGone:
                    return
        if timer.cancelled_caught:
            result.timed_out = True
            log.warning("agent %s exceeded its time limit of %.0f s; stopping it", agent.name, agent.timeout)
            self.monitor.stopping(agent.name)
            outcome = await stop_container(self.runtime, self.workers, container_id, grace=self.grace, force=self.force)
            result.mark_ended()
            result.stop_seconds = outcome.seconds

    async def _finish(self, agent: AgentPlan, container_id: str, result: AgentResult) -> None:
        """Stop the container if it runs, save its evidence, then remove it."""
        try:
            status = await self.workers.stop_call(self.runtime.status, container_id)
            if status.running:
                outcome = await stop_container(
                    self.runtime, self.workers, container_id, grace=self.grace, force=self.force
                )
                result.stop_seconds = outcome.seconds
                if not outcome.stopped:
                    result.fail("error", f"container {container_id[:12]} could not be stopped: {outcome.error}")
                    return
                status = await self.workers.stop_call(self.runtime.status, container_id)

            result.record_exit(status.exit_code, status.oom_killed)
            inspect = await self.workers.stop_call(self.runtime.inspect, container_id)
            _write_json(agent.log_path.with_suffix(".inspect.json"), redact_environment(inspect))
            await self.workers.stop_call(_save_logs, self.runtime, container_id, agent.log_path)
        except ContainerGone as exc:
            result.fail("evidence-missing", f"the container disappeared before its evidence was saved ({exc})")
        except (RuntimeFailure, DockerUnavailable) as exc:
            result.fail("evidence-missing", f"evidence could not be saved: {exc}")
        except OSError as exc:
            # The engine still keeps the evidence, so the stopped container is kept rather than removed.
            self._kept.add(container_id)
            result.fail(
                "evidence-missing",
                f"evidence could not be written to {self.plan.run_dir} ({exc.strerror}); the stopped container "
                f"{container_id[:12]} is kept: inspect it, then remove it with "
                f"`orchestrate cleanup {self.plan.run_id}`",
            )
            return
        else:
            await self.workers.stop_call(self.runtime.remove, container_id)
            self._containers.pop(agent.name, None)

        # A last look by the monitor, so an entry planted just before the exit is judged like any other.
        await self.monitor.files.scan_agent(agent.name)
        scan = await anyio.to_thread.run_sync(workspace.scan, agent.workspace)
        result.record_workspace(scan)
        for finding in scan.findings:
            self._audit("violation", agent=agent.name, violation="unreadable-entry", detail=finding)
        await self._publish(agent, result)

    async def _publish(self, agent: AgentPlan, result: AgentResult) -> None:
        """Publish the workspace of an agent that succeeded; only check the others'."""
        publish = result.may_publish()
        try:
            report = await self.workers.stop_call(self._publish_in_thread, agent, publish)
        except Exception as exc:  # noqa: BLE001 - one agent's publish must never end the whole run.
            if not isinstance(exc, PublishError | OSError):
                log.exception("agent %s: publishing failed unexpectedly", agent.name)
            log.error("agent %s: publishing failed: %s", agent.name, exc)
            self._audit("violation", agent=agent.name, violation="publish-failed", detail=str(exc))
            result.fail("error", f"publishing failed: {exc}")
            return
        early = len(result.published_paths)
        result.record_publish(report)
        changed = sum(item.action != "unchanged" for item in report.published)
        log.info(
            "agent %s: published %d file(s) at its exit, %d while it ran, in %.2f s, %d finding(s)",
            agent.name, changed, early, report.seconds, len(report.findings),
        )

    def _publish_in_thread(self, agent: AgentPlan, publish: bool) -> PublishReport:
        request = publish_request(self.plan, agent)
        report = publish_agent(request) if publish else check_workspace(request)
        _write_json(agent.log_path.with_suffix(".publish.json"), report.to_json())
        audit_report(self._audit, agent.name, report)
        return report

    def snapshot(self) -> list[AgentRow]:
        """Return the live view's rows: each agent's state, time, files and bytes so far, last event, violations."""
        rows = []
        for agent in self.plan.agents:
            result = self.results[agent.name]
            files = self.monitor.files.states[agent.name]
            state = result.state
            if state == "pending" and result.started_at is not None:
                state = "running" if result.ended_at is None else "stopping"
            rows.append(AgentRow(
                agent=agent.name,
                state=state,
                seconds=elapsed(result.started_at, result.ended_at),
                files=files.files,
                bytes=files.bytes,
                last_event=files.last_event,
                violations=sum(item.agent == agent.name for item in self.violations),
            ))
        return rows

    # -- violations ----------------------------------------------------------------------------------------

    def _on_violation(self, violation: Violation) -> None:
        """Record a violation and apply the run's policy to it, on the event loop.

        The audit record is written and flushed here, before any stop starts: about a millisecond, more on a slow disk.
        """
        action = self.plan.policy.get(violation.kind, "shutdown")
        self.violations.append(violation)
        self._audit("violation", violation=violation.kind, action=action, **{
            key: value for key, value in violation.to_json().items() if key != "kind"
        })
        log.warning("violation: %s (policy: %s)", violation.describe(), action,
                    extra={ACTION_FIELD: action, "violation_kind": violation.kind})
        self._notify(Activity("violation", violation.agent, violation.describe(),
                              {"kind": violation.kind, "action": action, "subject": violation.subject}))
        result = self.results.get(violation.agent)
        if action == "warn":
            return
        if result is not None:
            result.fail("violation", f"{violation.kind}: {violation.subject}: {violation.detail}".replace(": :", ":"))
        self.monitor.stop_publishing(violation.agent)
        if self._background is None:
            return
        if action == "stop-agent" and violation.agent in self._containers and self.stopped_by is None:
            self._background.start_soon(self._stop_agent, violation)
        elif action == "shutdown" or violation.agent not in self.results:
            if self.stopped_by is None:
                self.stopped_by = violation
                self._halted = True
                self._background.start_soon(self._emergency_stop, violation)

    async def _stop_agent(self, violation: Violation) -> None:
        container_id = self._containers.get(violation.agent)
        if container_id is None:
            return
        self.monitor.stopping(violation.agent)
        with anyio.CancelScope(shield=True):
            outcome = await stop_container(self.runtime, self.workers, container_id,
                                           grace=self.plan.shutdown.grace, force=self.force)
        seconds = time.monotonic() - violation.detected_at
        self.results[violation.agent].stop_seconds = seconds
        log.warning("agent %s stopped %.3f s after its %s", violation.agent, seconds, violation.kind)
        self._audit("agent-stopped", agent=violation.agent, reason=violation.kind, seconds=round(seconds, 3),
                    stopped=outcome.stopped, sigkill_sent=outcome.killed)

    async def _emergency_stop(self, violation: Violation) -> None:
        """Stop every container of the run in parallel, measure how long it took, then let agents finish."""
        deadline = self.plan.shutdown.deadline
        # SIGKILL and its confirmation need time too, so the grace period takes at most half the deadline.
        grace = min(self.plan.shutdown.grace, deadline / 2)
        self.monitor.stopping_all()
        for name, result in self.results.items():
            # An agent that already ended keeps its own outcome.
            if name != violation.agent and result.ended_at is None:
                result.fail("interrupted", f"stopped because the run was stopped by a {violation.kind} of agent "
                                           f"{violation.agent}")
        log.warning("stopping every agent of run %s: %s", self.plan.run_id, violation.describe())
        self._notify(Activity("shutdown", violation.agent, f"stopping every agent: {violation.kind}"))
        with anyio.CancelScope(shield=True):
            try:
                await self._stop_every_container(violation, grace, deadline)
            finally:
                self._stop_done.set()
        if self._agents_scope is not None:
            self._agents_scope.cancel()

    async def _stop_every_container(self, violation: Violation, grace: float, deadline: float) -> None:
        containers = list(self._containers.values())
        # Not cut at the deadline: each stop is bounded by the grace period and the kill's confirmation, and
        # the complete outcomes show which container, if any, outlived the deadline.
        outcomes = await stop_all(self.runtime, self.workers, containers, grace=grace, force=self.force)
        seconds = time.monotonic() - violation.detected_at
        self.stop_seconds = seconds
        running = [item.container_id[:12] for item in outcomes if not item.stopped]
        within = not running and seconds <= deadline
        message = (f"run stopped {seconds:.3f} s after the {violation.kind} "
                   f"(deadline {deadline:g} s{'' if within else ', MISSED'})")
        (log.warning if within else log.error)("%s", message)
        self._notify(Activity("shutdown", violation.agent, message,
                              {"seconds": round(seconds, 3), "within_deadline": within}))
        self._audit("shutdown", reason=violation.kind, agent=violation.agent, seconds=round(seconds, 6),
                    deadline=deadline, grace=grace, containers=len(containers),
                    sigkill_sent=sum(item.killed for item in outcomes), still_running=running,
                    within_deadline=within)

    async def _publish_closed(self, agent: AgentPlan, paths: frozenset[str]) -> None:
        """Publish files an agent closed while running; the final publish after its exit checks them all."""
        request = replace(publish_request(self.plan, agent), only=paths)
        try:
            report = await self.workers.call(publish_agent, request)
        except Exception as exc:  # noqa: BLE001 - publishing early is a convenience; it must never end the run.
            if not isinstance(exc, PublishError | OSError):
                log.exception("agent %s: publishing while running failed unexpectedly", agent.name)
            log.warning("agent %s: publishing while running failed: %s; its exit publishes again", agent.name, exc)
            return
        audit_report(self._audit, agent.name, report)
        self.results[agent.name].note_published(report)
        changed = [item.path for item in report.published if item.action != "unchanged"]
        if changed:
            self._notify(Activity("published", agent.name, f"published {len(changed)} file(s)",
                                  {"paths": changed[:20]}))

    def _notify(self, activity: Activity) -> None:
        try:
            self.listener(activity)
        except Exception:  # noqa: BLE001 - a broken display must never stop the run's safety work.
            log.exception("the activity listener failed")

    def _audit_stop_request(self, signal_name: str) -> None:
        request = self.plan.run_dir / "stop-request.json"
        try:
            details = json.loads(request.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            details = None
        if isinstance(details, dict):
            self._audit("stop-requested", signal=signal_name, request=details)
            log.warning("`orchestrate stop` asked for this (process %s, user %s)", details.get("by_pid"),
                        details.get("user"))

    async def _collect_evidence(self) -> None:
        from .evidence import EvidenceSource, collect_evidence  # only a run with violations needs it

        sources = [
            EvidenceSource(agent.name, agent.workspace, agent.log_path, agent.log_path.with_suffix(".inspect.json"))
            for agent in self.plan.agents
        ]
        violations = [item.to_json() for item in self.violations]
        try:
            files = await anyio.to_thread.run_sync(collect_evidence, self.plan.run_dir, sources, violations)
        except (OSError, OrchestrateError) as exc:
            log.error("evidence could not be written to %s: %s", self.plan.run_dir, exc)
            self._audit("evidence-failed", error=str(exc))
            return
        folder = files[0].folder if files else "evidence"
        log.info("evidence of %d violation(s) kept in %s", len(self.violations), self.plan.run_dir / folder)
        self._audit("evidence", folder=folder, files=[
            {"path": item.path, "sha256": item.sha256, "size": item.size} for item in files
        ])

    async def _sweep_leftovers(self) -> None:
        """Stop and remove every container labelled with this run that is still around."""
        try:
            leftovers = await self.workers.stop_call(
                self.runtime.list_labelled, {LABEL_RUN: self.plan.run_id}
            )
        except (RuntimeFailure, DockerUnavailable) as exc:
            log.error("could not list the run's containers to clean up: %s", exc)
            return
        for lifeline in self._lifelines.values():
            _close_quietly(lifeline)
        self._lifelines.clear()
        if not leftovers:
            return
        log.warning("stopping %d container(s) of run %s that were not yet recorded", len(leftovers), self.plan.run_id)
        await stop_all(self.runtime, self.workers, leftovers, grace=0, force=self.force)
        for container_id in leftovers:
            if container_id in self._kept:
                continue
            try:
                await self.workers.stop_call(self.runtime.remove, container_id)
            except (RuntimeFailure, DockerUnavailable) as exc:
                log.error("could not remove container %s: %s", container_id[:12], exc)


def redact_environment(inspect: dict[str, Any]) -> dict[str, Any]:
    """Return inspect data with the values of environment variables replaced: they may be secrets."""
    config = dict(inspect.get("Config") or {})
    config["Env"] = [f"{item.partition('=')[0]}=<redacted>" for item in config.get("Env") or []]
    return {**inspect, "Config": config}


def _close_quietly(lifeline: Lifeline) -> None:
    try:
        lifeline.close()
    except OSError as exc:
        log.debug("closing a lifeline failed: %s", exc)


def _save_logs(runtime: Runtime, container_id: str, path: Path) -> None:
    runtime.save_logs(container_id, path, max_bytes=LOG_LIMIT_BYTES)


def _write_json(path: Path, data: object) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    temporary.replace(path)
