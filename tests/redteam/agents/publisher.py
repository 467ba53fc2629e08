"""Attacks on the publisher: entries planted in the workspace that would copy or overwrite outside data.

Each agent plants its entry inside its own claim and stays alive a little, so
the monitor judges it while the agent runs. The verdict records what was
planted; whether it worked is decided on the host, by the output tree and the
audit log.
"""

import os
import socket
import time

from common import attempt, claim_folder, context, verdict, write_text

LINGER = 3


def _planted(attempted, steps):
    time.sleep(LINGER)
    # These attacks succeed only if the publisher copies their target; the host decides that.
    return verdict(attempted, steps, succeeded=False, planted=[name for name, step in steps.items() if step["ok"]])


def symlink_host_file():
    target = context()["host_file"]
    folder = claim_folder()
    steps = {"symlink": attempt(lambda: os.symlink(target, os.path.join(folder, "report.md")))}
    return _planted("symlink to a host file, for the publisher to follow", steps)


def symlink_dot_loop():
    folder = claim_folder()
    steps = {
        "s -> .": attempt(lambda: os.symlink(".", os.path.join(folder, "s"))),
        "up -> s/s/../../..": attempt(lambda: os.symlink("s/s/../../../../etc/passwd", os.path.join(folder, "up"))),
    }
    return _planted("symlink s -> . and a link through s/s/../../.. out of the workspace", steps)


def symlink_relative():
    folder = claim_folder()
    steps = {"up": attempt(lambda: os.symlink("../../../../../../etc/passwd", os.path.join(folder, "passwd.md")))}
    return _planted("relative symlink that climbs out of the workspace", steps)


def symlink_folder():
    folder = claim_folder()
    steps = {"etc": attempt(lambda: os.symlink("/etc", os.path.join(folder, "etc")))}
    return _planted("symlink to a folder outside, for the publisher to descend into", steps)


def hard_link():
    folder = claim_folder()
    original = write_text(os.path.join(folder, "original.md"))
    steps = {"link": attempt(lambda: os.link(original, os.path.join(folder, "second.md")))}
    return _planted("hard link inside the workspace, two names for one inode", steps)


def fifo():
    folder = claim_folder()
    steps = {"mkfifo": attempt(lambda: os.mkfifo(os.path.join(folder, "report.md")))}
    return _planted("FIFO that would block a publisher that opens it", steps)


def unix_socket():
    folder = claim_folder()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    steps = {"bind": attempt(lambda: server.bind(os.path.join(folder, "report.sock")))}
    result = _planted("Unix socket file in the workspace", steps)
    server.close()
    return result


def setuid_file():
    folder = claim_folder()
    path = write_text(os.path.join(folder, "tool"), "#!/bin/sh\nid\n")
    steps = {"chmod 4755": attempt(lambda: os.chmod(path, 0o4755)),
             "chmod 2755": attempt(lambda: os.chmod(write_text(os.path.join(folder, "tool2")), 0o2755))}
    return _planted("setuid and setgid files for the publisher to copy with their bits", steps)


def swap_race():
    """Swap a folder for a symlink to /etc, over and over, while the publisher works."""
    real = os.path.join(claim_folder(), "data")
    swaps = 0
    deadline = time.monotonic() + LINGER + 1
    while time.monotonic() < deadline:
        os.mkdir(real)
        write_text(os.path.join(real, "passwd"))
        time.sleep(0.001)
        os.unlink(os.path.join(real, "passwd"))
        os.rmdir(real)
        os.symlink("/etc", real)
        time.sleep(0.001)
        os.unlink(real)
        swaps += 1
    # It ends as a symlink, so the exit-time publish meets the link too.
    os.symlink("/etc", real)
    return verdict("swap a folder for a symlink to /etc during publishing", {}, succeeded=False, swaps=swaps)


def long_names():
    folder = claim_folder()
    steps = {
        "255-byte name": attempt(lambda: write_text(os.path.join(folder, "n" * 251 + ".txt"))),
        "256-byte name": attempt(lambda: write_text(os.path.join(folder, "n" * 256))),
    }

    def nest():
        path = folder
        for _ in range(70):
            path = os.path.join(path, "d" * 40)
            os.mkdir(path)
        return write_text(os.path.join(path, "deep.txt"))

    steps["70 levels, 2,800+ bytes"] = attempt(nest)
    time.sleep(LINGER)
    return verdict("very long names and a path deeper than the publisher's limits", steps, succeeded=False)


def non_utf8_name():
    folder = os.fsencode(claim_folder())
    steps = {
        "invalid UTF-8": attempt(lambda: write_text(folder + b"/bad-\xff\xfe.md")),
        "control characters": attempt(lambda: write_text(folder + b"/esc-\x1b[31m-\n.md")),
    }
    return _planted("file names that are not valid UTF-8 or hold terminal escapes", steps)


def claim_other():
    """Write into the claim of the victim of the same batch and into the publisher's own records."""
    facts = context()
    os.makedirs(os.path.join("/workspace/output", facts["claim_victim"]), exist_ok=True)
    steps = {
        "victim claim": attempt(lambda: write_text(os.path.join(
            "/workspace/output", facts["claim_victim"], "report.md"), "not the owner's\n")),
        "state folder": attempt(lambda: write_text(
            os.path.join("/workspace/output", ".orchestrate-ledger.jsonl"))),
    }
    os.makedirs("/workspace/output/.orchestrate", exist_ok=True)
    steps["publisher ledger"] = attempt(lambda: write_text("/workspace/output/.orchestrate/ledger.jsonl", "{}\n"))
    return _planted("publish over another agent's claim and the publisher's ledger", steps)


def claim_owner():
    """Not an attack: the owner of the claim that pub-claim-other writes into."""
    time.sleep(LINGER)
    return verdict("own a claim that another agent writes into (control)", {}, succeeded=False)


SCENARIOS = {
    "pub-symlink-host": symlink_host_file,
    "pub-symlink-dot-loop": symlink_dot_loop,
    "pub-symlink-relative": symlink_relative,
    "pub-symlink-folder": symlink_folder,
    "pub-hard-link": hard_link,
    "pub-fifo": fifo,
    "pub-socket": unix_socket,
    "pub-setuid": setuid_file,
    "pub-swap-race": swap_race,
    "pub-long-names": long_names,
    "pub-non-utf8": non_utf8_name,
    "pub-claim-other": claim_other,
    "pub-claim-owner": claim_owner,
}
