"""Resource attacks: exhaust processes, memory, CPU time, tmpfs, the workspace and its file count."""

import os
import signal
import time

from common import attempt, claim_folder, verdict, write_text


def fork_bomb():
    """Fork until the kernel refuses; the pids limit must stop it far short of the host's."""
    limit = int(os.environ.get("REDTEAM_PIDS", "64"))
    children = []
    error = None
    for _ in range(limit * 4):
        try:
            pid = os.fork()
        except OSError as exc:
            error = exc
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    steps = {"fork": {"ok": error is None, "detail": len(children),
                      "errno": None if error is None else "EAGAIN", "error": str(error)}}
    return verdict("fork bomb: more processes than the pids limit", steps, processes=len(children))


def memory_bomb():
    """Allocate and touch 1 GiB in a child; the memory limit must kill the child, not the host."""

    def allocate():
        child = os.fork()
        if child == 0:
            blocks = []
            for _ in range(1024):
                blocks.append(bytearray(1024 * 1024))  # bytearray writes zeros, so every page is touched
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if os.WIFSIGNALED(status):
            raise OSError(12, f"the allocating child was killed by signal {os.WTERMSIG(status)}")
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(12, f"the allocating child exited {os.waitstatus_to_exitcode(status)}")
        return "allocated 1 GiB"

    return verdict("memory bomb: touch 1 GiB under a smaller limit", {"allocate": attempt(allocate)})


def cpu_spin():
    """Spin past the timeout, ignoring SIGTERM; only the orchestrator's clock and SIGKILL end it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_text(os.path.join(claim_folder(), "started.txt"))
    while True:
        pass


def _fill(path, limit):
    written = 0
    chunk = b"x" * (1024 * 1024)
    with open(path, "wb") as handle:
        while written < limit:
            handle.write(chunk)
            handle.flush()
            written += len(chunk)
    return written


def fill_tmpfs():
    steps = {}
    for name, folder in (("tmp", "/tmp"), ("home", os.path.expanduser("~"))):
        steps[name] = attempt(lambda folder=folder: _fill(os.path.join(folder, "fill"), 512 * 1024 * 1024))
        try:
            steps[name]["size_on_disk"] = os.path.getsize(os.path.join(folder, "fill"))
            os.unlink(os.path.join(folder, "fill"))
        except OSError:
            pass
    return verdict("fill /tmp and the home folder past their size", steps)


def fill_workspace():
    """Write far more than the agent's max_total_bytes into its claim."""
    folder = claim_folder()
    written = 0
    for index in range(24):
        written += _fill(os.path.join(folder, f"blob-{index}.bin"), 1024 * 1024)
    time.sleep(2)
    return verdict("fill the workspace past the agent's byte quota", {}, succeeded=False, written=written)


def many_files():
    folder = os.path.join(claim_folder(), "many")
    count = int(os.environ.get("REDTEAM_FILES", "20000"))
    for index in range(count):
        if index % 1000 == 0:
            os.makedirs(os.path.join(folder, str(index // 1000)), exist_ok=True)
        with open(os.path.join(folder, str(index // 1000), str(index)), "w"):
            pass
    time.sleep(2)
    return verdict("create tens of thousands of tiny files", {}, succeeded=False, files=count)


def bystander():
    """Not an attack: ordinary work that must finish while the others exhaust their own limits."""
    total = sum(range(2_000_000))
    write_text(os.path.join(claim_folder(), "result.txt"), f"{total}\n")
    return verdict("finish ordinary work next to the bombs (control)", {}, succeeded=False, total=total)


SCENARIOS = {
    "res-fork-bomb": fork_bomb,
    "res-memory-bomb": memory_bomb,
    "res-cpu-spin": cpu_spin,
    "res-fill-tmpfs": fill_tmpfs,
    "res-fill-workspace": fill_workspace,
    "res-many-files": many_files,
    "res-bystander": bystander,
}
