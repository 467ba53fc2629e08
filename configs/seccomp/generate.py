"""Write agent.json, the seccomp profile every agent container runs under, from the groups below.

The profile is an allowlist: a system call not named here fails with EPERM.
It allows what compilers, interpreters, shells, git and build tools use, and
leaves out what only a system administrator, a debugger or a kernel exploit
needs. Edit the groups, then run `python3 configs/seccomp/generate.py` and
commit both files; a unit test fails when agent.json and this file disagree.

Left out on purpose (each is denied even though the capability checks in the
kernel would deny some of them too, because every denial here removes kernel
code an agent can reach):

- namespaces and mounts: unshare, setns, mount, umount2, pivot_root, chroot,
  fsopen, fsconfig, fsmount, fspick, move_mount, open_tree, mount_setattr;
- the kernel keyring: keyctl, add_key, request_key;
- tracing and other processes' memory: ptrace, process_vm_readv,
  process_vm_writev, process_madvise, pidfd_getfd, kcmp, perf_event_open;
- kernel extension points: bpf, userfaultfd, io_uring_setup, io_uring_enter,
  io_uring_register, init_module, finit_module, delete_module, kexec_load,
  kexec_file_load;
- machine administration: reboot, swapon, swapoff, acct, quotactl, syslog,
  settimeofday, clock_settime, adjtimex, clock_adjtime, sethostname,
  setdomainname, iopl, ioperm, modify_ldt, vhangup, lookup_dcookie, nfsservctl;
- file handles, which bypass path permissions: open_by_handle_at,
  name_to_handle_at; and fanotify_init, fanotify_mark;
- NUMA placement: mbind, set_mempolicy, migrate_pages, move_pages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROFILE = Path(__file__).with_name("agent.json")

# Linux constants the argument filters test.
AF_VSOCK = 40
# Every CLONE_NEW* flag: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
ENOSYS = 38
# personality(2) values a program may set: PER_LINUX, PER_LINUX32, and 0xffffffff, which only reads it.
PERSONALITIES = (0x0, 0x8, 0xFFFFFFFF)

GROUPS: dict[str, tuple[str, ...]] = {
    "process life": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
        "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "arch_prctl", "prctl",
        "restart_syscall", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
        "pidfd_open", "pidfd_send_signal", "seccomp",
    ),
    "threads and scheduling": (
        "futex", "futex_waitv", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
        "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
        "sched_get_priority_min", "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority",
        "setpriority", "ioprio_get", "ioprio_set", "getcpu", "membarrier",
    ),
    "signals": (
        "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
        "rt_sigsuspend", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "pause",
        "alarm", "signalfd", "signalfd4",
    ),
    "users and limits": (
        "getuid", "geteuid", "getgid", "getegid", "getgroups", "setgroups", "setuid", "setgid", "setreuid",
        "setregid", "setresuid", "setresgid", "getresuid", "getresgid", "setfsuid", "setfsgid", "capget",
        "capset", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "uname", "sysinfo", "umask",
    ),
    "memory": (
        "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "mlock", "mlock2",
        "munlock", "mlockall", "munlockall", "pkey_alloc", "pkey_free", "pkey_mprotect", "memfd_create",
        "remap_file_pages", "get_mempolicy", "map_shadow_stack",
    ),
    "file input and output": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "open", "openat", "openat2", "creat", "close", "close_range", "lseek", "dup", "dup2", "dup3", "fcntl",
        "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "truncate", "ftruncate", "fallocate",
        "fadvise64", "readahead", "sendfile", "copy_file_range", "splice", "tee", "vmsplice", "ioctl",
        "io_setup", "io_destroy", "io_getevents", "io_pgetevents", "io_submit", "io_cancel", "cachestat",
    ),
    "file metadata and folders": (
        "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat",
        "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2",
        "mkdir", "mkdirat", "rmdir", "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink",
        "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "fchownat", "lchown",
        "utime", "utimes", "utimensat", "futimesat", "mknod", "mknodat",
        "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
        "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    ),
    "waiting for events": (
        "pipe", "pipe2", "eventfd", "eventfd2", "select", "pselect6", "poll", "ppoll", "epoll_create",
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "inotify_init",
        "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    ),
    "time": (
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
        "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete", "getitimer",
        "setitimer", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    ),
    # The container has no network but loopback, so these reach only Unix sockets and 127.0.0.1.
    "sockets": (
        "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername", "sendto",
        "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt",
    ),
    # The container has its own IPC namespace, so these reach no other container.
    "inter-process communication": (
        "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
        "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
        "mq_getsetattr",
    ),
    "randomness and self-sandboxing": (
        "getrandom", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    ),
}


def build_profile() -> dict[str, object]:
    """Return the profile as a document in the format `docker run --security-opt seccomp=FILE` reads."""
    rules: list[dict[str, object]] = []
    for purpose, names in GROUPS.items():
        rules.append({"comment": purpose, "names": sorted(names), "action": "SCMP_ACT_ALLOW"})

    rules.append({
        "comment": "socket, except for AF_VSOCK, which can reach the host or other virtual machines",
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
    })
    rules.append({
        "comment": "clone of threads and processes, without any flag that creates a namespace",
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    })
    rules.append({
        # clone3 passes its flags in a structure that seccomp cannot read, so it cannot be filtered
        # like clone. ENOSYS makes the C library fall back to clone.
        "comment": "clone3 reports ENOSYS, so the C library uses the filtered clone",
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": ENOSYS,
    })
    for value in PERSONALITIES:
        rules.append({
            "comment": "personality, only to read it or to select the Linux ABI",
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
        })

    return {
        "comment": "orchestrate's agent profile; generated by configs/seccomp/generate.py, edit that file",
        "defaultAction": "SCMP_ACT_ERRNO",
        # Only the native architectures: 32-bit x86 and x32 system calls are denied as a whole.
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
        ],
        "syscalls": rules,
    }


def profile_text() -> str:
    return json.dumps(build_profile(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = profile_text()
    if argv[1:] == ["--check"]:
        current = PROFILE.read_text(encoding="utf-8") if PROFILE.exists() else ""
        if current != text:
            print(f"{PROFILE} is out of date; run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    PROFILE.write_text(text, encoding="utf-8")
    print(f"wrote {PROFILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
