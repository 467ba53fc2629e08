"""`orchestrate doctor`: check that this machine can run agents, and name the fix for each problem.

`gather_facts` reads the machine (the engine's info, /proc, the file system);
`run_checks` turns those facts into one result per check, so the judgement is
testable with facts made up in a unit test.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .egress_plan import GVISOR_NETWORK_RUNTIME, GVISOR_NETWORK_SETUP
from .errors import EnvironmentProblem, OrchestrateError
from .manifest import DEFAULT_IMAGE
from .plan_checks import GVISOR_SETUP
from .seccomp import load_profile

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
DOCTOR_LABEL = "orchestrate.doctor"
# Below these, a run of many agents or a large workspace soon runs out; both are rough floors, not measurements.
MIN_INOTIFY_WATCHES = 65_536
MIN_FREE_BYTES = 2 * 1024**3
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    # The command or step that fixes the problem; None when there is none.
    fix: str | None = None


@dataclass(frozen=True)
class DoctorFacts:
    """Facts about the machine that `run_checks` judges; None marks a fact that could not be read."""

    # Why the engine could not be reached, or None when it responded.
    docker_error: str | None = None
    server_version: str | None = None
    api_version: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    base_image: str = DEFAULT_IMAGE
    base_image_present: bool = False
    inotify_max_watches: int | None = None
    inotify_watches_in_use: int | None = None
    runs_dir: Path = Path("runs")
    # Why runs cannot be created in the runs folder, or None when they can.
    runs_dir_problem: str | None = None
    free_bytes: int | None = None
    # Why the seccomp profile failed to load or to start a container, or None when it did both.
    seccomp_error: str | None = None
    seccomp_sha256: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        """Return 1 when a check failed, since orchestrate cannot run agents then, and 0 otherwise."""
        return 1 if any(check.status == "fail" for check in self.checks) else 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.exit_code == 0, "checks": [asdict(check) for check in self.checks]}


def run_checks(facts: DoctorFacts) -> DoctorReport:
    checks = [_docker_check(facts)]
    if facts.docker_error is None:
        checks += [
            _storage_check(facts.info),
            _cgroup_check(facts.info),
            *_runtime_checks(facts.info),
            _userns_check(facts.info),
            _image_check(facts),
        ]
    checks += [_seccomp_check(facts), _inotify_check(facts), _disk_check(facts)]
    return DoctorReport(checks)


def _docker_check(facts: DoctorFacts) -> Check:
    if facts.docker_error is not None:
        return Check("docker", "fail", f"the engine is not reachable: {facts.docker_error}",
                     "start it: `sudo systemctl start docker` (or `sudo dockerd &`), or run "
                     "`sudo bash scripts/quickstart.sh`; check DOCKER_HOST")
    return Check("docker", "ok", f"Docker Engine {facts.server_version}, API {facts.api_version}")


def _storage_check(info: dict[str, Any]) -> Check:
    driver = str(info.get("Driver") or "unknown")
    if driver == "overlay2":
        return Check("storage driver", "ok", driver)
    return Check("storage driver", "warn", f"{driver}: containers start slower and use more disk than on overlay2",
                 'set "storage-driver": "overlay2" in /etc/docker/daemon.json and restart the engine')


def _cgroup_check(info: dict[str, Any]) -> Check:
    version = str(info.get("CgroupVersion") or "")
    driver = str(info.get("CgroupDriver") or "unknown")
    if version in ("1", "2"):
        return Check("cgroup", "ok", f"version {version}, driver {driver}")
    return Check("cgroup", "warn", "the engine does not report its cgroup version, so limits may be unverifiable",
                 "upgrade the engine to Docker 20.10 or newer")


def _runtime_checks(info: dict[str, Any]) -> list[Check]:
    listed = info.get("Runtimes")
    runtimes: dict[str, Any] = listed if isinstance(listed, dict) else {}
    checks = []
    if "runc" in runtimes:
        checks.append(Check("runtime runc", "ok", "registered; agents with isolation runc use it"))
    else:
        checks.append(Check("runtime runc", "fail", "not registered, and every agent with isolation runc needs it",
                            "reinstall the engine: `sudo apt-get install --reinstall docker.io runc`"))
    runsc = runtimes.get("runsc")
    if isinstance(runsc, dict):
        arguments = " ".join(str(item) for item in runsc.get("runtimeArgs") or []) or "no arguments"
        checks.append(Check("runtime runsc", "ok", f"registered ({runsc.get('path')}, {arguments}); "
                            "agents with isolation gvisor use it"))
    else:
        checks.append(Check("runtime runsc", "warn", "not registered, so agents with isolation gvisor cannot run",
                            GVISOR_SETUP))
    if isinstance(runtimes.get(GVISOR_NETWORK_RUNTIME), dict):
        checks.append(Check(f"runtime {GVISOR_NETWORK_RUNTIME}", "ok",
                            "registered; gVisor agents with network: allowlist use it"))
    else:
        checks.append(Check(f"runtime {GVISOR_NETWORK_RUNTIME}", "warn",
                            "not registered, so gVisor agents with network: allowlist cannot run",
                            GVISOR_NETWORK_SETUP))
    return checks


def _userns_check(info: dict[str, Any]) -> Check:
    options = " ".join(str(item) for item in info.get("SecurityOptions") or [])
    if "name=rootless" in options:
        return Check("userns-remap", "fail", "the engine is rootless, which orchestrate does not support yet",
                     "use the system engine: `sudo systemctl start docker` and unset DOCKER_HOST")
    if "name=userns" in options:
        return Check("userns-remap", "ok", "on: container UIDs map to the dockremap range of /etc/subuid")
    return Check("userns-remap", "ok", "off: agents run as an unprivileged UID of the host")


def _image_check(facts: DoctorFacts) -> Check:
    if facts.base_image_present:
        return Check("base image", "ok", f"{facts.base_image} is present")
    return Check("base image", "fail", f"{facts.base_image} is missing", "orchestrate images build")


def _seccomp_check(facts: DoctorFacts) -> Check:
    if facts.seccomp_error is not None:
        return Check("seccomp profile", "fail", facts.seccomp_error,
                     "regenerate it: `python3 configs/seccomp/generate.py`")
    detail = f"loads (sha256 {(facts.seccomp_sha256 or '?')[:12]})"
    if facts.docker_error is None and facts.base_image_present:
        detail += f"; `true` ran under it in {facts.base_image}"
    return Check("seccomp profile", "ok", detail)


def _inotify_check(facts: DoctorFacts) -> Check:
    limit = facts.inotify_max_watches
    fix = f"sudo sysctl fs.inotify.max_user_watches={MIN_INOTIFY_WATCHES * 8}"
    if limit is None:
        return Check("inotify watches", "warn", f"{INOTIFY_SYSCTL} cannot be read; the monitor may miss files", fix)
    used = "" if facts.inotify_watches_in_use is None else f", {facts.inotify_watches_in_use} in use by this user"
    if limit < MIN_INOTIFY_WATCHES:
        return Check("inotify watches", "warn",
                     f"fs.inotify.max_user_watches is {limit}{used}; the monitor watches every folder of every "
                     "workspace and falls back to slower rescans past the limit", fix)
    return Check("inotify watches", "ok", f"fs.inotify.max_user_watches is {limit}{used}")


def _disk_check(facts: DoctorFacts) -> Check:
    if facts.runs_dir_problem is not None:
        return Check("runs folder", "fail", f"{facts.runs_dir} {facts.runs_dir_problem}",
                     "pass --runs-dir with a folder you can write, or create it")
    if facts.free_bytes is None:
        return Check("free disk", "warn", f"the free space of {facts.runs_dir} cannot be read",
                     "check that the runs folder's parent exists and is readable")
    free = f"{facts.free_bytes / 1024**3:.1f} GiB free for {facts.runs_dir}"
    if facts.free_bytes < MIN_FREE_BYTES:
        return Check("free disk", "warn", f"{free}; workspaces have no size limit of their own",
                     "free some space, or pass --runs-dir with a folder on a larger file system")
    return Check("free disk", "ok", free)


def runs_dir_problem(runs_dir: Path) -> str | None:
    """Return why `run` could not create run folders in `runs_dir`, or None when it could."""
    if runs_dir.exists() and not runs_dir.is_dir():
        return "is a file, not a folder"
    existing = runs_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be created or written: {existing} is not writable by this user"
    return None


def gather_facts(runs_dir: Path, *, base_image: str = DEFAULT_IMAGE) -> DoctorFacts:
    """Read every fact `run_checks` judges, starting at most one short-lived test container."""
    inotify_limit = _read_int(INOTIFY_SYSCTL)
    common: dict[str, Any] = {
        "base_image": base_image,
        "inotify_max_watches": inotify_limit,
        "inotify_watches_in_use": count_inotify_watches(os.getuid()),
        "runs_dir": runs_dir,
        "runs_dir_problem": runs_dir_problem(runs_dir),
        "free_bytes": _free_bytes(runs_dir),
    }
    try:
        profile = load_profile()
    except EnvironmentProblem as exc:
        profile_error: str | None = str(exc)
        sha256 = None
    else:
        profile_error, sha256 = None, profile.sha256

    import docker.errors
    import requests.exceptions

    from .runtime.docker import DockerRuntime

    try:
        runtime = DockerRuntime()
        info = runtime.client.api.info()
        version = runtime.client.api.version()
    except (OrchestrateError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return DoctorFacts(docker_error=str(exc), seccomp_error=profile_error, seccomp_sha256=sha256, **common)

    present = _image_present(runtime, base_image)
    if profile_error is None and present:
        profile_error = _start_under_profile(runtime, base_image, profile.option)
    runtime.close()
    return DoctorFacts(
        server_version=str(version.get("Version")),
        api_version=str(version.get("ApiVersion")),
        info=dict(info),
        base_image_present=present,
        seccomp_error=profile_error,
        seccomp_sha256=sha256,
        **common,
    )


def _image_present(runtime: Any, image: str) -> bool:
    import docker.errors

    try:
        runtime.client.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _start_under_profile(runtime: Any, image: str, option: str) -> str | None:
    """Run `true` in a container under the profile; return why it failed, or None."""
    import docker.errors

    api = runtime.client.api
    host_config = api.create_host_config(network_mode="none", cap_drop=["ALL"], read_only=True,
                                         security_opt=["no-new-privileges:true", option])
    container_id = None
    try:
        created = api.create_container(image, command=["true"], entrypoint=[], user="1000:1000",
                                       labels={DOCTOR_LABEL: "seccomp"}, network_disabled=True,
                                       host_config=host_config)
        container_id = created["Id"]
        api.start(container_id)
        code = int(api.wait(container_id, timeout=30).get("StatusCode", -1))
    except (docker.errors.DockerException, OSError) as exc:
        return f"the engine could not start a container under the profile: {exc}"
    finally:
        if container_id is not None:
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.DockerException as exc:
                log.warning("could not remove the test container %s: %s", container_id[:12], exc)
    if code != 0:
        return f"`true` exited with code {code} under the profile; a system call it needs is denied"
    return None


def count_inotify_watches(uid: int, proc: Path = Path("/proc")) -> int | None:
    """Count the inotify watches of the processes of `uid`, from /proc/PID/fdinfo; None when unreadable."""
    total = 0
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            for fd in (entry / "fdinfo").iterdir():
                with fd.open(encoding="utf-8", errors="replace") as info:
                    total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue  # The process ended, or its descriptors belong to another user.
    return total


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _free_bytes(path: Path) -> int | None:
    # The runs folder may not exist yet; its nearest existing parent is on the same file system.
    candidate = path.resolve()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    try:
        return shutil.disk_usage(candidate).free
    except OSError:
        return None


def report_text(report: DoctorReport) -> str:
    width = max(len(check.name) for check in report.checks)
    lines = []
    for check in report.checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    verdict = "orchestrate cannot run agents here" if report.exit_code else "orchestrate can run agents here"
    lines.append(verdict)
    return "\n".join(lines)
