"""Secret attacks: find the host's environment, home folder, Docker credentials or another agent's variables.

The test puts a fake secret, starting with a known prefix, into orchestrate's
environment and into a fake home folder. The agent gets only the prefix and the
secret's sha256, so finding the secret means finding the prefix somewhere.
"""

import hashlib
import os

from common import context, process_ids, read_bytes, verdict, walk

SEARCHED = ("/home", "/root", "/etc", "/tmp", "/var", "/run", "/mnt", "/opt", "/srv", "/media", "/workspace")


def _environments():
    """Yield (pid, environment bytes) for every process whose environment is readable."""
    for pid in process_ids():
        try:
            yield pid, read_bytes(f"/proc/{pid}/environ")
        except OSError:
            continue


def host_environment():
    facts = context()
    prefix = bytes.fromhex(facts["secret_prefix_hex"])
    digest = facts["secret_sha256"]
    own = [value for value in os.environ.values() if hashlib.sha256(value.encode()).hexdigest() == digest]
    steps = {
        "own environment": {"ok": bool(own) or facts["secret_name"] in os.environ, "detail": sorted(os.environ)},
        "any process": {"ok": any(prefix in environ for _, environ in _environments()), "detail": process_ids()},
        "DOCKER_HOST": {"ok": "DOCKER_HOST" in os.environ, "detail": os.environ.get("DOCKER_HOST")},
    }
    return verdict("read the fake secret from orchestrate's environment", steps)


def _files_containing(prefix, tops):
    found = []
    for top in tops:
        for path, info in walk(top):
            if (info.st_mode & 0o170000) != 0o100000 or info.st_size > 1 << 20:
                continue
            try:
                if prefix in read_bytes(path):
                    found.append(path)
            except OSError:
                continue
    return found


def host_home():
    facts = context()
    home = facts["host_home"]
    candidates = [home, f"{home}/.ssh/id_ed25519", f"{home}/.aws/credentials", "/root/.ssh", "/root/.aws"]
    steps = {f"exists {path}": {"ok": os.path.exists(path), "detail": path} for path in candidates}
    with open("/proc/self/mountinfo") as handle:
        mounts = handle.read()
    steps["home in mount table"] = {"ok": home in mounts, "detail": [line.split()[3:5] for line in mounts.splitlines()]}
    found = _files_containing(bytes.fromhex(facts["secret_prefix_hex"]), SEARCHED)
    steps["secret in any file"] = {"ok": bool(found), "detail": found}
    return verdict("read the host's home folder and its credential stores", steps)


def docker_config():
    facts = context()
    paths = [os.path.expanduser("~/.docker/config.json"), "/root/.docker/config.json",
             f"{facts['host_home']}/.docker/config.json"]
    if os.environ.get("DOCKER_CONFIG"):
        paths.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    steps = {f"read {path}": {"ok": os.path.exists(path), "detail": path} for path in paths}
    found = [path for path, _ in walk("/") if os.path.basename(path) == "config.json" and "/.docker/" in path]
    steps["search .docker/config.json"] = {"ok": bool(found), "detail": found}
    return verdict("read the Docker client's credentials", steps)


def other_environments():
    """Read other containers' variables through /proc: another agent's name would show there."""
    own = os.environ.get("ORCHESTRATE_AGENT", "").encode()
    foreign = []
    for pid, environ in _environments():
        for item in environ.split(b"\0"):
            if item.startswith(b"ORCHESTRATE_AGENT=") and item.split(b"=", 1)[1] != own:
                foreign.append(pid)
    steps = {"foreign environment": {"ok": bool(foreign), "detail": foreign},
             "visible processes": {"ok": False, "detail": process_ids()}}
    return verdict("read another container's environment through /proc", steps)


SCENARIOS = {
    "sec-host-env": host_environment,
    "sec-host-home": host_home,
    "sec-docker-config": docker_config,
    "sec-proc-environ": other_environments,
}
