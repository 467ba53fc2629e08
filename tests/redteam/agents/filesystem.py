"""File-system attacks that must fail inside the container: writes outside the workspace, reads of other ones."""

import os
import time

from common import (
    OUTPUT,
    SHARED,
    SOURCE,
    VIRTUAL_TREES,
    attempt,
    claim_folder,
    context,
    process_ids,
    verdict,
    walk,
    write_text,
)


def write_source():
    target = os.path.join(SOURCE, "attack.py")
    steps = {
        "create": attempt(lambda: write_text(os.path.join(SOURCE, "planted.py"))),
        "overwrite": attempt(lambda: write_text(target, "print('owned')\n")),
        "append": attempt(lambda: open(target, "a").close()),
        "chmod": attempt(lambda: os.chmod(target, 0o777)),
        "utime": attempt(lambda: os.utime(target, (0, 0))),
        "unlink": attempt(lambda: os.unlink(os.path.join(SOURCE, "context.json"))),
        "rename": attempt(lambda: os.rename(target, os.path.join(SOURCE, "moved.py"))),
        "mkdir": attempt(lambda: os.mkdir(os.path.join(SOURCE, "planted"))),
    }
    return verdict("change the read-only source", steps)


def write_root():
    steps = {}
    for path in ("/etc/passwd", "/etc/redteam", "/usr/local/bin/redteam", "/redteam", "/var/tmp/redteam",
                 "/usr/lib/python3/dist-packages/redteam.pth"):
        steps[path] = attempt(lambda path=path: write_text(path))
    steps["chmod /etc/shadow"] = attempt(lambda: os.chmod("/etc/shadow", 0o666))
    return verdict("write the root file system", steps)


def write_shared():
    steps = {
        "create": attempt(lambda: write_text(os.path.join(SHARED, "planted.md"))),
        "mkdir": attempt(lambda: os.mkdir(os.path.join(SHARED, "planted"))),
        "ledger": attempt(lambda: write_text(os.path.join(SHARED, ".orchestrate", "ledger.jsonl"), "{}\n")),
        "locks": attempt(lambda: os.mkdir(os.path.join(SHARED, ".orchestrate", "locks"))),
    }
    return verdict("write the shared output tree directly", steps)


def other_workspace():
    """Look for the victim agent's marker and write next to it."""
    facts = context()
    marker = facts["victim_marker"]
    # The victim writes its marker at start; give it a moment to exist.
    time.sleep(1.5)
    # The shared tree shows what the publisher already copied out of the victim's workspace, read-only,
    # by design; the attack is on the workspace itself.
    found = [path for path, _ in walk("/", skip=(*VIRTUAL_TREES, SHARED)) if os.path.basename(path) == marker]
    steps = {"find marker": {"ok": bool(found), "detail": found}}
    for path in found:
        steps[f"write next to {path}"] = attempt(lambda path=path: write_text(os.path.dirname(path) + "/owned"))

    # The host path of the runs folder, learnt from the mount table, opened directly and through /proc.
    with open("/proc/self/mountinfo") as handle:
        mounts = handle.read()
    host_workspace = next((line.split()[3] for line in mounts.splitlines() if line.split()[4] == OUTPUT), "")
    victim = os.path.join(os.path.dirname(host_workspace), facts["victim_agent"])
    steps["open by host path"] = attempt(lambda: os.listdir(victim))
    steps["via /proc/1/root"] = attempt(lambda: os.listdir("/proc/1/root" + victim))
    steps["masked runs folder in source"] = attempt(lambda: write_text(os.path.join(SOURCE, "runs", "owned")))
    return verdict("find and write another agent's workspace", steps, host_workspace=host_workspace)


def victim():
    """Not an attack: the agent whose workspace the other agent hunts for."""
    write_text(os.path.join(claim_folder(), context()["victim_marker"]), "victim\n")
    time.sleep(6)
    return verdict("be found by another agent (control)", {}, succeeded=False)


def _same_root(path):
    mine = os.stat("/")
    theirs = os.stat(path)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def proc_root():
    host_file = context()["host_file"]
    steps = {}
    for pid in ["self", *process_ids()]:
        root = f"/proc/{pid}/root"
        try:
            same = _same_root(root + "/")
        except OSError as exc:
            steps[f"{root} reachable"] = {"ok": False, "errno": "EACCES", "error": str(exc)}
            continue
        steps[f"{root} is another root"] = {"ok": not same, "detail": f"same as / : {same}"}
        steps[f"{root} climbs out"] = {"ok": not _same_root(root + "/../../.."), "detail": "../../.."}
    steps["host file through /proc/1/root"] = attempt(lambda: open("/proc/1/root" + host_file).read(64))
    steps["host file through /proc/self/cwd"] = attempt(
        lambda: open("/proc/self/cwd/../../.." + host_file).read(64))
    return verdict("reach the host's root through /proc/<pid>/root or cwd", steps)


def leaked_descriptors():
    """Look for descriptors, in any visible process, that lead to files outside the container."""
    steps = {}
    seen = {}
    for pid in ["self", *process_ids()]:
        folder = f"/proc/{pid}/fd"
        try:
            numbers = os.listdir(folder)
        except OSError:
            continue
        for number in numbers:
            path = f"{folder}/{number}"
            try:
                target = os.readlink(path)
            except OSError:
                continue
            seen[path] = target
            if not target.startswith("/") or target.startswith(("/dev/", "/proc/")):
                continue  # pipes, sockets, anonymous inodes and devices lead to no file.
            if os.path.exists(target):
                continue  # a file of this container's own view
            # A path this container cannot see: try to use the descriptor to reach its folder.
            steps[f"{path} -> {target}"] = attempt(lambda path=path: os.listdir(path + "/.."))
    # Numbers past the usual three on this process would be descriptors the engine leaked in.
    extra = sorted(int(number) for number in os.listdir("/proc/self/fd") if int(number) > 2)
    steps["inherited descriptors"] = {"ok": False, "detail": extra}
    return verdict("use a descriptor leaked from the host to reach a file outside", steps, descriptors=seen)


def hard_link_out():
    folder = claim_folder()
    steps = {
        "link source file": attempt(lambda: os.link(os.path.join(SOURCE, "attack.py"), os.path.join(folder, "a"))),
        "link /etc/passwd": attempt(lambda: os.link("/etc/passwd", os.path.join(folder, "passwd"))),
        "link shared tree": attempt(lambda: os.link(SHARED, os.path.join(folder, "shared"))),
    }
    return verdict("hard-link a file from outside the workspace into it", steps)


def dot_dot():
    folder = claim_folder()
    os.chdir(folder)
    steps = {
        "write ../../src": attempt(lambda: write_text("../../src/dotdot.txt")),
        "write ../../../etc": attempt(lambda: write_text("../../../etc/dotdot.txt")),
        "rename out": attempt(lambda: os.rename(write_text("inside.txt"), "../../shared/inside.txt")),
        "openat above workspace": attempt(lambda: os.open("../..", os.O_RDONLY) and write_text("/workspace/x")),
        "mkdir ..": attempt(lambda: os.mkdir(OUTPUT + "/../planted")),
    }
    return verdict("write outside the workspace through '..'", steps)


SCENARIOS = {
    "fs-write-source": write_source,
    "fs-write-rootfs": write_root,
    "fs-write-shared": write_shared,
    "fs-other-workspace": other_workspace,
    "fs-victim": victim,
    "fs-proc-root": proc_root,
    "fs-leaked-fds": leaked_descriptors,
    "fs-hardlink-out": hard_link_out,
    "fs-dotdot": dot_dot,
}
