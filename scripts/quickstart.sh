#!/usr/bin/env bash
# Set up orchestrate on a Debian or Ubuntu machine and run the bundled example.
#
# As root it installs what is missing (the Docker engine, mmdebstrap, Python's
# venv module, gVisor's runsc when the package is available), starts the Docker
# engine and registers runsc with it. As another user it checks those
# and prints the command that installs what is missing. Then it installs orchestrate
# into .venv, builds the sandbox images (offline when no base image is present)
# and runs configs/agents.example.yaml.
#
# Set ORCHESTRATE_SKIP_EXAMPLE=1 to stop after the image build.
set -euo pipefail

cd "$(dirname "$0")/.."
say() { printf 'quickstart: %s\n' "$*"; }
fail() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

packages=(docker.io mmdebstrap python3-venv debian-archive-keyring ca-certificates)

missing_packages() {
    local package
    for package in "${packages[@]}"; do
        dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || printf '%s ' "$package"
    done
}

install_packages() {
    command -v apt-get >/dev/null || fail "apt-get not found; this script supports Debian and Ubuntu"
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        fail "missing packages: $missing; install them with: sudo apt-get install $missing"
    fi
    say "installing $missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# A killed dockerd can linger as a zombie, which `kill -0` still reports as alive;
# only a running process named dockerd counts.
dockerd_alive() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

start_docker() {
    docker info >/dev/null 2>&1 && return 0
    [ "$(id -u)" -eq 0 ] || fail "the Docker engine is not reachable; start it (sudo systemctl start docker) \
and add yourself to the docker group (sudo usermod -aG docker \"$USER\", then log in again)"

    if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
        say "started the Docker engine with systemd"
    else
        # Without systemd, start dockerd ourselves. A pid file left by a dockerd that
        # was killed makes a new one refuse to start, so remove it when no such process lives.
        if [ -f /var/run/docker.pid ] && ! dockerd_alive "$(cat /var/run/docker.pid)"; then
            say "removing the stale /var/run/docker.pid"
            rm -f /var/run/docker.pid
        fi
        say "starting dockerd in the background (log: /var/log/orchestrate-dockerd.log)"
        nohup setsid dockerd >/var/log/orchestrate-dockerd.log 2>&1 </dev/null &
    fi

    local waited=0
    until docker info >/dev/null 2>&1; do
        waited=$((waited + 1))
        [ "$waited" -le 60 ] || fail "dockerd did not answer within 60 s; see /var/log/orchestrate-dockerd.log"
        sleep 1
    done
    say "the Docker engine is up"
}

runsc_registered() {
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'
}

# Merge the runsc entry into daemon.json, keeping every other setting; fails on a file that is not JSON.
register_runsc() {
    python3 - /etc/docker/daemon.json <<'PYTHON'
import json, os, sys
path = sys.argv[1]
settings = {}
if os.path.exists(path):
    with open(path, encoding="utf-8") as existing:
        text = existing.read()
    settings = json.loads(text) if text.strip() else {}
runtimes = settings.setdefault("runtimes", {})
runtimes["runsc"] = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
# gVisor agents behind the egress broker: the sandbox uses the container's own network namespace.
runtimes["runsc-network"] = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w", encoding="utf-8") as updated:
    json.dump(settings, updated, indent=2)
    updated.write("\n")
os.replace(path + ".tmp", path)
PYTHON
}

# gVisor (runsc) runs agents with `isolation: gvisor` on a user-space kernel. Only those agents
# need it, so setup goes on without it when it cannot be installed or registered.
setup_gvisor() {
    # The engine keeps a runtime that left daemon.json until it restarts, so both are checked.
    runsc_registered && grep -q '"runsc-network"' /etc/docker/daemon.json 2>/dev/null && return 0
    if [ "$(id -u)" -ne 0 ]; then
        runsc_registered && return 0
        say "gVisor is not registered with Docker, so agents with isolation: gvisor cannot run;" \
            "rerun this script as root to install it"
        return 0
    fi
    if ! command -v runsc >/dev/null; then
        say "installing runsc (gVisor)"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runsc >/dev/null 2>&1; then
            apt-get update -qq || true
            if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runsc >/dev/null 2>&1
            then
                say "warning: the runsc package could not be installed; continuing without gVisor" \
                    "(agents with isolation: gvisor will not run)"
                return 0
            fi
        fi
    fi
    if ! register_runsc; then
        say "warning: /etc/docker/daemon.json is not valid JSON, so runsc was not registered; fix the file" \
            "and rerun this script; continuing without gVisor"
        return 0
    fi

    # The engine rereads its runtimes on SIGHUP. Only the dockerd of the pid file is signalled.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet docker 2>/dev/null; then
        systemctl reload docker
    elif [ -f /var/run/docker.pid ] && dockerd_alive "$(cat /var/run/docker.pid)"; then
        kill -HUP "$(cat /var/run/docker.pid)"
    else
        say "warning: no dockerd found through /var/run/docker.pid to reload; continuing without gVisor"
        return 0
    fi
    local waited=0
    until runsc_registered; do
        waited=$((waited + 1))
        if [ "$waited" -gt 30 ]; then
            say "warning: the engine did not list runsc within 30 s of the reload; continuing without gVisor"
            return 0
        fi
        sleep 1
    done
    say "gVisor's runsc is registered with the Docker engine"
}

install_orchestrate() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "Python 3.11 or newer is needed; this is $(python3 --version)"
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    say "installing orchestrate into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
}

install_packages
start_docker
setup_gvisor
install_orchestrate
say "building the sandbox images"
.venv/bin/orchestrate images build

if [ "${ORCHESTRATE_SKIP_EXAMPLE:-0}" = "1" ]; then
    say "setup done; ORCHESTRATE_SKIP_EXAMPLE=1, so the example is not run"
    exit 0
fi
say "running the example: .venv/bin/orchestrate run configs/agents.example.yaml"
.venv/bin/orchestrate run configs/agents.example.yaml
