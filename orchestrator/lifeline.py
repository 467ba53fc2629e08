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
"""

from __future__ import annotations

WRAPPER_NAME = "orchestrate-lifeline"

# "$@" is the agent's command. `kill -KILL -1` signals every process this user may
# signal in the container's PID namespace: all of the agent's processes and the wrapper.
# As root it would reach far more (on a host: everything). So root only kills its own process
# group, and orchestrate never runs an agent as root anyway. The watcher starts before the
# agent, so an agent that uses up its process limit at once cannot keep it from starting.
# The wrapper is the engine init's only child, so the container ends when the wrapper
# ends. It runs the agent in a runner subshell that reports the agent's exit code by
# file and SIGUSR1, and waits on a watcher that reads the input through descriptor 3
# (sh gives background jobs /dev/null as input otherwise). Whatever ends the watcher,
# end of input or an agent that kills it, ends every process of the agent: the switch
# fails closed, and the wrapper, which kill -1 spares, exits as if killed (137).
# An agent that kills the wrapper itself ends its own container.
WRAPPER_SCRIPT = """\
main=$$
exit_file=/tmp/.orchestrate-exit-$$
trap 'kill -TERM "$runner" 2>/dev/null' TERM
trap 'kill -INT "$runner" 2>/dev/null' INT
trap 'code=$(cat "$exit_file" 2>/dev/null); exit "${code:-1}"' USR1
exec 3<&0
cat <&3 >/dev/null &
watcher=$!
exec 3<&-
(
    trap 'kill -TERM "$agent" 2>/dev/null' TERM
    trap 'kill -INT "$agent" 2>/dev/null' INT
    "$@" </dev/null &
    agent=$!
    while :; do
        wait "$agent"
        code=$?
        kill -0 "$agent" 2>/dev/null || break
    done
    echo "$code" >"$exit_file"
    kill -USR1 "$main"
) 3<&- &
runner=$!
while :; do
    wait "$watcher"
    kill -0 "$watcher" 2>/dev/null || break
done
if [ "$(id -u)" -ne 0 ]; then kill -KILL -1; else kill -KILL 0; fi
exit 137
"""

# Programs that only serve as PID 1; the engine's own init (docker-init, a tini) takes their place.
INIT_PROGRAMS = ("tini", "tini-static", "dumb-init", "docker-init")


def wrapped_command(
    image_entrypoint: tuple[str, ...], command: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the container's entrypoint and command that run `command` under the lifeline wrapper.

    The image's own entrypoint stays in front of the agent's command, unless it is
    only an init program, which the engine's init replaces.
    """
    entrypoint_prefix = _without_init(image_entrypoint)
    return ("/bin/sh", "-c", WRAPPER_SCRIPT, WRAPPER_NAME), (*entrypoint_prefix, *command)


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
