"""Helpers shared by the attack programs: run one step, record its outcome, write the verdict.

These files run inside agent containers with the image's python3, so they use
the standard library only. A verdict says whether the attack reached its goal
("succeeded"), and every step it tried with the error it met, so the host-side
test can tell a blocked attempt from a program that never ran.
"""

import ctypes
import ctypes.util
import errno
import json
import os
import stat

SOURCE = "/workspace/src"
OUTPUT = "/workspace/output"
SHARED = "/workspace/shared"
VIRTUAL_TREES = ("/proc", "/sys", "/dev")

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def context():
    """Return the facts the test wrote into the source: canary addresses, host paths, tokens."""
    with open(os.path.join(SOURCE, "context.json")) as handle:
        return json.load(handle)


def agent_name():
    return os.environ.get("ORCHESTRATE_AGENT", "unknown")


def claim_folder():
    """Return this agent's folder in its workspace, the only path its `writes` claim covers."""
    folder = os.path.join(OUTPUT, agent_name())
    os.makedirs(folder, exist_ok=True)
    return folder


def errno_name(number):
    return errno.errorcode.get(number or 0, str(number))


def attempt(action):
    """Run one step; return {"ok": True, "detail": ...} or the error it raised."""
    try:
        return {"ok": True, "detail": action()}
    except TimeoutError as exc:
        # A socket timeout is an OSError without an errno.
        return {"ok": False, "errno": "ETIMEDOUT", "error": str(exc)}
    except OSError as exc:
        return {"ok": False, "errno": errno_name(exc.errno), "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of the step is its outcome.
        return {"ok": False, "errno": type(exc).__name__, "error": str(exc)}


def syscall_step(number, *arguments):
    """Call a raw system call through libc; raise OSError with its errno when it returns -1."""

    def call():
        result = libc.syscall(ctypes.c_long(number), *arguments)
        if result == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    return attempt(call)


def libc_step(function, *arguments):
    def call():
        result = function(*arguments)
        if result == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    return attempt(call)


def verdict(attempted, steps, *, succeeded=None, **details):
    """Build a verdict; by default the attack succeeded when any of its steps did."""
    if succeeded is None:
        succeeded = any(step.get("ok") for step in steps.values())
    errors = sorted({step["errno"] for step in steps.values() if not step.get("ok") and "errno" in step})
    return {"attempt": attempted, "succeeded": bool(succeeded), "error": ",".join(errors) or None,
            "steps": steps, **details}


def write_verdict(result):
    path = os.path.join(claim_folder(), "verdict.json")
    temporary = path + ".part"
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True, default=str)
    os.rename(temporary, path)


def write_text(path, text="redteam\n"):
    with open(path, "w") as handle:
        handle.write(text)
    return path


def walk(top="/", *, skip=VIRTUAL_TREES):
    """Yield (path, lstat) for every entry under `top` outside the kernel's virtual trees."""
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.path in skip:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield entry.path, info
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)


def process_ids():
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def read_bytes(path, limit=1 << 20):
    with open(path, "rb") as handle:
        return handle.read(limit)
