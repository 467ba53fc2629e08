"""Connect the user's terminal to an agent: `orchestrate exec`, `orchestrate attach`, and a run's own terminal."""

from __future__ import annotations

import logging
import os
import signal
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .control_client import Relay, RelayEnd, SessionError, connect, open_session, run_socket
from .control_protocol import Request
from .errors import InputError
from .plan import RunPlan
from .terminal import raw_mode, wake_on_resize, window_size

log = logging.getLogger(__name__)

STDIN = 0


def exec_command(runs_dir: Path, run_id: str, agent: str, command: list[str], *, tty: bool | None) -> int:
    """Run `command` in a running agent through its run process; return the command's exit code."""
    if not command:
        raise InputError("give the command to run after `--`, such as `orchestrate exec RUN AGENT -- ls -l`")
    use_tty = sys.stdin.isatty() and sys.stdout.isatty() if tty is None else tty
    if use_tty and not sys.stdin.isatty():
        raise InputError("--tty needs a terminal on standard input; run it from a terminal or pass --no-tty")
    size = window_size(STDIN) if use_tty else None
    connection = connect(run_socket(runs_dir, run_id))
    with connection:
        request = Request(action="exec", agent=agent, command=tuple(command), tty=use_tty,
                          rows=None if size is None else size[0], cols=None if size is None else size[1])
        opened = open_session(connection, request)
        with _terminal(use_tty) as resize_fd:
            end = Relay(connection, input_fd=STDIN, output=sys.stdout.buffer, errors=sys.stderr.buffer,
                        terminal_fd=STDIN if use_tty else None, resize_fd=resize_fd).run(opened)
    if end.exit_code is None:
        raise SessionError(f"the command's exit code is unknown: the run {run_id} or agent {agent} ended while it ran")
    return end.exit_code


def attach_agent(runs_dir: Path, run_id: str, agent: str) -> RelayEnd:
    """Connect this terminal to an interactive agent until it ends or the user types Ctrl-P Ctrl-Q."""
    if not sys.stdin.isatty():
        raise InputError("attach needs a terminal on standard input; run it from a terminal")
    size = window_size(STDIN)
    connection = connect(run_socket(runs_dir, run_id))
    with connection:
        request = Request(action="attach", agent=agent, command=(), tty=True,
                          rows=None if size is None else size[0], cols=None if size is None else size[1])
        opened = open_session(connection, request)
        with _terminal(True) as resize_fd:
            return Relay(connection, input_fd=STDIN, output=sys.stdout.buffer, errors=sys.stderr.buffer,
                         terminal_fd=STDIN, detach=True, resize_fd=resize_fd).run(opened)


@contextmanager
def _terminal(tty: bool) -> Iterator[int | None]:
    if not tty:
        yield None
        return
    pipe = wake_on_resize()
    try:
        with raw_mode(STDIN):
            yield None if pipe is None else pipe[0]
    finally:
        if pipe is not None:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            os.close(pipe[0])
            os.close(pipe[1])


class LocalTerminal:
    """This process's own terminal, connected to an interactive agent of the run it is running.

    `orchestrate shell` and `run --attach` pass `start` as the run's control-ready
    callback. The relay runs in a thread, because the run's event loop owns the main thread.
    """

    def __init__(self, agent: str, *, detach: bool) -> None:
        self.agent = agent
        self.detach = detach
        self.end: RelayEnd | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = termios.tcgetattr(STDIN)
        # Made here, in the main thread, because only the main thread can take SIGWINCH.
        self._resize_pipe = wake_on_resize()

    def start(self, path: Path) -> None:
        self._thread = threading.Thread(target=self._run, args=(path,), name="orchestrate-terminal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop relaying and give the terminal back its settings; safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        termios.tcsetattr(STDIN, termios.TCSADRAIN, self._saved)
        if self._resize_pipe is not None:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            for fd in self._resize_pipe:
                os.close(fd)
            self._resize_pipe = None

    def _run(self, path: Path) -> None:
        size = window_size(STDIN)
        request = Request(action="attach", agent=self.agent, command=(), tty=True,
                          rows=None if size is None else size[0], cols=None if size is None else size[1])
        try:
            with connect(path) as connection, _log_lines_for_raw_terminal():
                opened = open_session(connection, request)
                with raw_mode(STDIN):
                    self.end = Relay(connection, input_fd=STDIN, output=sys.stdout.buffer, errors=sys.stderr.buffer,
                                     terminal_fd=STDIN, detach=self.detach, stop=self._stop,
                                     resize_fd=None if self._resize_pipe is None else self._resize_pipe[0]).run(opened)
            if self.end.detached:
                run_dir = path.parent.parent
                log.info("detached from agent %s, which keeps running; attach again with `orchestrate attach %s %s "
                         "--runs-dir %s`", self.agent, run_dir.name, self.agent, run_dir.parent)
        except Exception as exc:  # noqa: BLE001 - the run goes on without a terminal; the reason is kept and shown.
            self.error = str(exc)
            log.error("the terminal of agent %s could not be attached: %s", self.agent, exc)


@contextmanager
def _log_lines_for_raw_terminal() -> Iterator[None]:
    """End log lines with CR LF while the terminal is raw, which no longer turns LF into both."""
    handlers = [handler for handler in logging.getLogger("orchestrator").handlers
                if isinstance(handler, logging.StreamHandler)]
    for handler in handlers:
        handler.terminator = "\r\n"
    try:
        yield
    finally:
        for handler in handlers:
            handler.terminator = "\n"


def terminal_for(plan: RunPlan, agent: str) -> LocalTerminal:
    """Check that `agent` of `plan` can take this terminal (`run --attach`), and return the terminal to connect."""
    agents = {item.name: item for item in plan.agents}
    if agent not in agents:
        raise InputError(f"--attach {agent}: the manifest has no such agent; its agents are: {', '.join(agents)}")
    if agents[agent].session_command is None:
        raise InputError(f"--attach {agent}: the agent is not interactive; set `interactive: true` in its entry")
    if not sys.stdin.isatty():
        raise InputError("--attach needs a terminal on standard input; run it from a terminal")
    return LocalTerminal(agent, detach=True)
