"""The seccomp profile every agent runs under: load it, check it, and name it by its sha256.

The profile is `configs/seccomp/agent.json`, an allowlist of system calls that
`configs/seccomp/generate.py` writes. Docker 20.10 takes the profile's JSON
text, not a path, in the `seccomp=` security option. orchestrate sends it in
compact form, which the engine stores as it is, so the sha256 of that text
identifies the profile in the plan, in `docker inspect` and in a posture drift.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import EnvironmentProblem

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PROFILE_PATH = REPOSITORY_ROOT / "configs" / "seccomp" / "agent.json"
OPTION_PREFIX = "seccomp="

# System calls the profile must never allow: each one opens kernel code that no agent needs and
# that escapes and privilege raises go through. `check_profile` rejects a profile that allows one.
NEVER_ALLOWED = frozenset({
    "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "keyctl", "add_key", "request_key",
    "bpf", "userfaultfd", "ptrace", "perf_event_open", "process_vm_readv", "process_vm_writev",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon", "swapoff",
    "reboot", "acct", "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
})
ALLOW_ACTIONS = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"})


@dataclass(frozen=True)
class Profile:
    path: Path
    # The compact JSON text sent to the engine, and its sha256 in hex.
    text: str
    sha256: str

    @property
    def option(self) -> str:
        return OPTION_PREFIX + self.text


def load_profile(path: Path = PROFILE_PATH) -> Profile:
    """Read and check a profile; raise EnvironmentProblem naming the file when it is missing or unsafe."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot read the seccomp profile {path}: {exc.strerror}; run orchestrate from a checkout of the "
            "project, or regenerate it with `python3 configs/seccomp/generate.py`"
        ) from exc
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EnvironmentProblem(
            f"the seccomp profile {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
            "regenerate it with `python3 configs/seccomp/generate.py`"
        ) from exc

    problem = check_profile(document)
    if problem is not None:
        raise EnvironmentProblem(f"the seccomp profile {path} {problem}; fix configs/seccomp/generate.py and rerun it")

    text = json.dumps(document, separators=(",", ":"))
    return Profile(path=path, text=text, sha256=text_sha256(text))


@lru_cache(maxsize=1)
def shipped_profile() -> Profile:
    """Return the profile in `configs/`, read once per process."""
    return load_profile()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_profile(document: object) -> str | None:
    """Return why a profile document is unsafe or malformed; None for an allowlist without NEVER_ALLOWED calls."""
    if not isinstance(document, dict):
        return "is not a JSON object"
    default = document.get("defaultAction")
    if default not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD"):
        return f"has defaultAction {default!r}; an allowlist needs SCMP_ACT_ERRNO, so unlisted calls fail"
    rules = document.get("syscalls")
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        return "has no list of syscall rules"

    allowed = set()
    for rule in rules:
        names = rule.get("names")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return f"has a rule whose names are not a list of strings: {rule!r:.80}"
        if rule.get("action") in ALLOW_ACTIONS:
            allowed.update(names)
    forbidden = sorted(allowed & NEVER_ALLOWED)
    if forbidden:
        return f"allows {', '.join(forbidden)}, which agents must never call"
    return None


def option_sha256(options: list[str]) -> str | None:
    """Return the sha256 of the profile text in a container's security options, or None when none is set."""
    for option in options:
        if option.startswith(OPTION_PREFIX):
            return text_sha256(option[len(OPTION_PREFIX):])
    return None
