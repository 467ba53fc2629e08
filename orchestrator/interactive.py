"""Interactive agents: the program runs in a terminal that the run process opens inside the container.

The engine can give a container a terminal (Tty), but then it never closes the
container's input when the attached client goes away. Moby closes stdin on
detach only without a Tty, as measured on Docker 20.10. The lifeline depends
on that end of input. So an interactive agent's container is created like any
other, without a terminal and with the lifeline, and runs only a keeper. Right
after the start, the run process creates an exec with a terminal that runs the
agent's command, and relays that terminal to `run --attach`, `attach` and
`shell`. Exec'd processes share the container's user, limits and PID
namespace, so the lifeline's `kill -KILL -1` and the container's end stop them too.

The session wrapper writes the program's exit code to the container's /tmp and
signals the keeper, which exits with that code. So the container ends when the
program does, and its exit code is the program's.
"""

from __future__ import annotations

KEEPER_NAME = "orchestrate-keeper"
SESSION_NAME = "orchestrate-session"
KEEPER_PID_FILE = "/tmp/.orchestrate-keeper"
SESSION_EXIT_FILE = "/tmp/.orchestrate-session-exit"

# The keeper sleeps in the background and waits, so USR1 interrupts the wait at once.
KEEPER_SCRIPT = f"""\
echo $$ >{KEEPER_PID_FILE}
trap 'code=$(cat {SESSION_EXIT_FILE} 2>/dev/null); exit "${{code:-1}}"' USR1
while :; do sleep 3600 & wait $!; done
"""

# `trap : INT QUIT` keeps the wrapper alive when Ctrl-C reaches the terminal's process group, so it still
# records the exit code. A caught signal is reset to its default in the program, which Ctrl-C then ends.
SESSION_SCRIPT = f"""\
trap : INT QUIT
"$@"
code=$?
echo "$code" >{SESSION_EXIT_FILE}
kill -USR1 "$(cat {KEEPER_PID_FILE})" 2>/dev/null
exit "$code"
"""

# The terminal type that programs in a session see. It is fixed, not the user's TERM, because no host
# variable reaches an agent unless its manifest names it.
SESSION_TERM = "xterm-256color"

# Runs bash when the image has it, else sh.
SHELL_COMMAND = ("/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi")


def keeper_command() -> tuple[str, ...]:
    """Return the container command of an interactive agent."""
    return ("/bin/sh", "-c", KEEPER_SCRIPT, KEEPER_NAME)


def session_command(program: tuple[str, ...]) -> tuple[str, ...]:
    """Return the exec command that runs an interactive agent's `program` and ends its keeper with it."""
    return ("/bin/sh", "-c", SESSION_SCRIPT, SESSION_NAME, *program)


def session_program(session: tuple[str, ...]) -> tuple[str, ...]:
    """Return the program that a session command from `session_command` runs."""
    return session[4:]
