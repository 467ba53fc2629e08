"""Privilege attacks: gain root, a capability, or a kernel interface the sandbox withholds.

System call numbers are those of x86_64, the architecture the suite runs on.
"""

import ctypes
import os
import stat
import subprocess

from common import (
    OUTPUT,
    SOURCE,
    attempt,
    claim_folder,
    libc,
    libc_step,
    process_ids,
    syscall_step,
    verdict,
    walk,
    write_text,
)

SYS_SETTIMEOFDAY = 164
SYS_SWAPON = 167
SYS_INIT_MODULE = 175
SYS_KEXEC_LOAD = 246
SYS_ADD_KEY = 248
SYS_KEYCTL = 250
SYS_PERF_EVENT_OPEN = 298
SYS_OPEN_BY_HANDLE_AT = 304
SYS_BPF = 321
SYS_USERFAULTFD = 323

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
KEY_SPEC_SESSION_KEYRING = -3
KEYCTL_JOIN_SESSION_KEYRING = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_GET_NO_NEW_PRIVS = 39
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
PTRACE_SEIZE = 0x4206


def _run(command):
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    if completed.returncode != 0:
        raise OSError(1, f"exit {completed.returncode}: {completed.stderr.strip()[:200]}")
    return completed.stdout.strip()


def _euid_of(program):
    return int(_run([program, "-c", "import os; print(os.geteuid())"]))


def setuid_binaries():
    found = []
    for path, info in walk("/"):
        if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append({"path": path, "owner": info.st_uid, "mode": oct(info.st_mode)})
    steps = {}
    for item in found:
        steps[f"exec:{item['path']}"] = attempt(lambda path=item["path"]: _run([path, "--version"]))

    # A setuid copy of python3 in the agent's own workspace: it may run, but it must not run as root.
    copy = os.path.join(claim_folder(), "python-suid")
    with open("/usr/bin/python3", "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    os.chmod(copy, 0o4755)
    euid = attempt(lambda: _euid_of(copy))
    os.unlink(copy)
    steps["own-setuid-copy-root"] = {"ok": euid.get("detail") == 0, "detail": euid}
    succeeded = any(item["owner"] == 0 for item in found) or steps["own-setuid-copy-root"]["ok"]
    return verdict("run a setuid program to become root", steps, succeeded=succeeded, setuid_files=found,
                   no_new_privs=libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))


def sudo_su():
    steps = {
        "sudo": attempt(lambda: _run(["sudo", "-n", "id", "-u"])),
        "su": attempt(lambda: _run(["su", "-c", "id -u", "root"])),
        "setuid-0": libc_step(libc.setuid, 0),
        "setgid-0": libc_step(libc.setgid, 0),
    }
    return verdict("become root with sudo, su or setuid(0)", steps)


def _status_field(name):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def capabilities():
    sets = {name: _status_field(name) for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    steps = {name: {"ok": int(value or "0", 16) != 0, "detail": value} for name, value in sets.items()}
    steps["ambient-raise-net-raw"] = libc_step(libc.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0)
    steps["ambient-raise-sys-admin"] = libc_step(libc.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0)
    steps["raw-socket"] = attempt(lambda: __import__("socket").socket(2, 3, 1).close())
    return verdict("hold or raise a capability (CAP_NET_RAW, CAP_SYS_ADMIN)", steps)


def capability_acts():
    hostname = b"redteam-owned"
    timeval = (ctypes.c_long * 2)(0, 0)
    steps = {
        "sethostname (CAP_SYS_ADMIN)": libc_step(libc.sethostname, hostname, len(hostname)),
        "swapon (CAP_SYS_ADMIN)": syscall_step(SYS_SWAPON, b"/tmp/swap", 0),
        "chroot (CAP_SYS_CHROOT)": libc_step(libc.chroot, b"/tmp"),
        "settimeofday (CAP_SYS_TIME)": syscall_step(SYS_SETTIMEOFDAY, ctypes.byref(timeval), None),
        "chown to root (CAP_CHOWN)": attempt(lambda: os.chown(write_text("/tmp/owned"), 0, 0)),
        "nice -10 (CAP_SYS_NICE)": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, -10)),
        "kill init (same user)": {"ok": False, "detail": "not tried: it would end the agent's own container"},
    }
    return verdict("act with CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SYS_TIME, CAP_CHOWN or CAP_SYS_NICE", steps)


def mount():
    os.makedirs("/tmp/mnt", exist_ok=True)
    steps = {
        "mount tmpfs": libc_step(libc.mount, b"none", b"/tmp/mnt", b"tmpfs", 0, None),
        "bind the source": libc_step(libc.mount, SOURCE.encode(), b"/tmp/mnt", None, MS_BIND, None),
        "remount the source read-write": libc_step(
            libc.mount, None, SOURCE.encode(), None, MS_REMOUNT | MS_BIND, None),
        "remount / read-write": libc_step(libc.mount, None, b"/", None, MS_REMOUNT, None),
        "mount program": attempt(lambda: _run(["mount", "-t", "tmpfs", "none", "/tmp/mnt"])),
        "umount the shared tree": libc_step(libc.umount2, b"/workspace/shared", 2),
    }
    return verdict("mount, bind or remount a file system", steps)


def unshare():
    def in_new_namespaces():
        # In a child, so a namespace that does open up cannot disturb the verdict writer.
        child = os.fork()
        if child == 0:
            code = 1
            if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0:
                libc.mount(None, SOURCE.encode(), None, MS_REMOUNT | MS_BIND, None)
                try:
                    write_text(os.path.join(SOURCE, "unshare-was-here"))
                    code = 0
                except OSError:
                    code = 2
            else:
                code = 10 + ctypes.get_errno()
            os._exit(code)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise OSError(code - 10 if code >= 10 else 0, f"child exit {code}")
        return "wrote the source from a new user namespace"

    steps = {
        "unshare user+mount": libc_step(libc.unshare, CLONE_NEWUSER | CLONE_NEWNS),
        "unshare net": libc_step(libc.unshare, CLONE_NEWNET),
        "unshare program": attempt(lambda: _run(["unshare", "-r", "id", "-u"])),
        "write the source from a new namespace": attempt(in_new_namespaces),
    }
    # Creating a namespace inside gVisor's own kernel grants nothing on the host; the goal is the write.
    return verdict("enter new namespaces and use them to write the source", steps,
                   succeeded=steps["write the source from a new namespace"]["ok"])


def ptrace():
    try:
        own_mount_ns = os.readlink("/proc/self/ns/mnt")
    except OSError:
        # gVisor's /proc has no ns links: every process it shows belongs to this sandbox.
        own_mount_ns = None
    steps = {}
    foreign = []
    for pid in process_ids():
        if pid == os.getpid():
            continue
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            namespace = None
        if namespace != own_mount_ns:
            foreign.append(pid)
        # PTRACE_SEIZE leaves the tracee running, so a successful attach to the lifeline wrapper
        # does not freeze it; the kernel detaches every tracee when this process exits.
        step = libc_step(libc.ptrace, PTRACE_SEIZE, pid, None, None)
        steps[f"attach {pid}"] = step
    # Attaching to a process of the agent's own container gains nothing it does not already have.
    # The goal is a process of another container or of the host.
    succeeded = any(steps.get(f"attach {pid}", {}).get("ok") for pid in foreign)
    return verdict("ptrace a process of another agent or of the host", steps, succeeded=succeeded,
                   foreign_processes=foreign, visible_processes=process_ids())


def _read_device(path):
    with open(path, "rb") as device:
        return f"read {len(device.read(512))} bytes"


def mknod():
    """Create device nodes and read through them; gVisor may create a node, which leads to no host device."""
    folder = claim_folder()
    steps = {
        "block device in /tmp": attempt(lambda: os.mknod("/tmp/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0))),
        "char device in workspace": attempt(
            lambda: os.mknod(os.path.join(folder, "mem"), stat.S_IFCHR | 0o600, os.makedev(1, 1))),
    }
    reads = {
        "read /tmp/sda": attempt(lambda: _read_device("/tmp/sda")),
        "read workspace mem": attempt(lambda: _read_device(os.path.join(folder, "mem"))),
        "read /dev/sda": attempt(lambda: _read_device("/dev/sda")),
    }
    succeeded = any(step["ok"] for step in reads.values())
    return verdict("create a device node and read a host device through it", {**steps, **reads}, succeeded=succeeded)


def proc_sys():
    steps = {}
    for path, value in (
        ("/proc/sys/kernel/hostname", "owned"),
        ("/proc/sys/kernel/core_pattern", "|/workspace/output/evil"),
        ("/proc/sys/vm/drop_caches", "3"),
        ("/proc/sysrq-trigger", "h"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ):
        steps[path] = attempt(lambda path=path, value=value: write_text(path, value))
    return verdict("write kernel settings under /proc/sys", steps)


def cgroup():
    steps = {}
    candidates = [
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/memory/release_agent",
        "/sys/fs/cgroup/memory/notify_on_release",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
    ]
    for path in candidates:
        if os.path.exists(path):
            steps[f"write {path}"] = attempt(lambda path=path: write_text(path, "-1"))
    steps["mkdir child cgroup"] = attempt(lambda: os.mkdir("/sys/fs/cgroup/memory/redteam"))
    steps["mount cgroup"] = libc_step(libc.mount, b"cgroup", b"/tmp", b"cgroup", 0, b"memory")
    return verdict("raise a cgroup limit or set a release agent", steps)


def keyring():
    payload = b"redteam"
    steps = {
        "add_key": syscall_step(SYS_ADD_KEY, b"user", b"redteam", payload, len(payload), KEY_SPEC_SESSION_KEYRING),
        "join session keyring": syscall_step(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None),
    }
    try:
        with open("/proc/keys") as handle:
            keys = handle.read().splitlines()
    except OSError:
        keys = []
    steps["read host keys"] = {"ok": bool(keys), "detail": keys[:10]}
    return verdict("use the kernel keyring", steps)


def kernel_interfaces():
    attributes = ctypes.create_string_buffer(128)
    handle = ctypes.create_string_buffer(8 + 128)
    ctypes.memmove(handle, (ctypes.c_uint * 2)(8, 1), 8)
    steps = {
        "bpf": syscall_step(SYS_BPF, 0, attributes, 128),
        "perf_event_open": syscall_step(SYS_PERF_EVENT_OPEN, attributes, 0, -1, -1, 0),
        "userfaultfd": syscall_step(SYS_USERFAULTFD, 0),
        "init_module": syscall_step(SYS_INIT_MODULE, attributes, 0, b""),
        "kexec_load": syscall_step(SYS_KEXEC_LOAD, 0, 0, None, 0),
        # The "shocker" escape: open a host file by its handle, which CAP_DAC_READ_SEARCH allows.
        "open_by_handle_at": syscall_step(SYS_OPEN_BY_HANDLE_AT, os.open(OUTPUT, os.O_RDONLY), handle, 0),
    }
    return verdict("call bpf, perf_event_open, userfaultfd, module loading or open_by_handle_at", steps)


SCENARIOS = {
    "priv-setuid": setuid_binaries,
    "priv-sudo-su": sudo_su,
    "priv-capabilities": capabilities,
    "priv-capability-acts": capability_acts,
    "priv-mount": mount,
    "priv-unshare": unshare,
    "priv-ptrace": ptrace,
    "priv-mknod": mknod,
    "priv-proc-sys": proc_sys,
    "priv-cgroup": cgroup,
    "priv-keyring": keyring,
    "priv-kernel-calls": kernel_interfaces,
}
