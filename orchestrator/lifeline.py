"""The dead-man's switch: agents end when the orchestrate process that started them dies.

Each agent container is created with its standard input open and closed after
the first client detaches (OpenStdin and StdinOnce). orchestrate attaches to
that input before the start and keeps the connection open while the run lasts.
When orchestrate dies for any reason, SIGKILL included, the kernel closes the
connection, the engine closes the container's input, and the wrapper below,
which waits for end of input, kills every process of the agent. Nothing in it
depends on the dead process, and the input is one-way, from orchestrate to one
container, so it gives agents no channel to each other.

The wrapper runs the agent's command with /dev/null as input and forwards
SIGTERM and SIGINT to it, so a normal stop still reaches the agent first. It
needs /bin/sh in the image.

NOTE: the watcher runs as the agent's user, so a hostile agent can kill it and
outlive a dead orchestrate; the switch covers orchestrate's death, not that.
"""

from __future__ import annotations

WRAPPER_NAME = "orchestrate-lifeline"

# "$@" is the agent's command. `kill -KILL -1` signals every process this user may
# signal in the container's PID namespace: all of the agent's processes and the wrapper.
# As root it would reach far more (on a host: everything). So root only kills its own process
# group, and orchestrate never runs an agent as root anyway. The watcher starts before the agent, so an
# agent that uses up its process limit at once cannot keep the watcher from starting.
# The watcher reads the input through descriptor 3, because sh gives a background job
# /dev/null as its standard input; the agent itself gets neither.
WRAPPER_SCRIPT = """\
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
exec 3<&0
{ cat <&3 >/dev/null; if [ "$(id -u)" -ne 0 ]; then kill -KILL -1; else kill -KILL 0; fi; } &
exec 3<&-
"$@" </dev/null &
child=$!
while :; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || exit "$code"
done
"""

# Programs that only serve as PID 1; the engine's own init (docker-init, a tini) takes their place.
INIT_PROGRAMS = ("tini", "tini-static", "dumb-init", "docker-init")


def wrapped_command(
    image_entrypoint: tuple[str, ...], command: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the container's entrypoint and command that run `command` under the lifeline wrapper.

    The image's own entrypoint is kept in front of the agent's command, unless it is
    only an init program, which the engine's init replaces.
    """
    kept = _without_init(image_entrypoint)
    return ("/bin/sh", "-c", WRAPPER_SCRIPT, WRAPPER_NAME), (*kept, *command)


def _without_init(entrypoint: tuple[str, ...]) -> tuple[str, ...]:
    if not entrypoint:
        return ()
    program = entrypoint[0].rsplit("/", 1)[-1]
    if program not in INIT_PROGRAMS:
        return entrypoint
    rest = entrypoint[1:]
    # tini and dumb-init take their own options before "--".
    if "--" in rest:
        return rest[rest.index("--") + 1 :]
    return tuple(item for item in rest if not item.startswith("-"))
