"""Run git on the host against the user's repository only, with no configuration an agent can reach.

An agent controls every byte of its copy, `.git` included: a hook, `core.fsmonitor`, a filter or an
`alias` there would run code on the host the moment host git used that folder as its repository. So host git
is only ever pointed at the user's own git folder (`--git-dir`), never at a copy after its agent started.
Python reads the copies instead (`copy_tree`). The environment is cleared of every `GIT_*` variable, the
system configuration is skipped, the global one is a file of orchestrate's own, HOME is an empty folder, and
hooks and the file-system monitor are switched off on the command line, which overrides the repository's
configuration.

When orchestrate runs as root, git runs as the owner of the user's repository, so the objects, refs and
lock file it writes there stay the user's. Writes to the user's repository happen under one cross-process
lock per repository, so two runs (or a run and a `merge`) never race on its refs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from .errors import EnvironmentProblem

GIT_TIMEOUT = 300.0
LOCK_TIMEOUT = 120.0
LOCK_NAME = "orchestrate.lock"
# Options that override whatever the repository's own configuration sets. safe.directory lets root work on
# the user's repository; host git never opens a repository an agent could have written.
SAFE_OPTIONS = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
    "-c", "safe.directory=*",
)
IDENTITY = {
    "GIT_COMMITTER_NAME": "orchestrate",
    "GIT_COMMITTER_EMAIL": "orchestrate@localhost",
}


class GitFailed(EnvironmentProblem):
    """A git command on the host failed; the message carries its arguments and its error output."""


def _environment(home: str) -> dict[str, str]:
    # The only global setting: root may read the user's repository. The `-c` option alone does not reach the
    # upload-pack process that a clone starts, which then rejects the repository as of dubious ownership.
    global_config = os.path.join(home, "gitconfig")
    with open(global_config, "w", encoding="utf-8") as handle:
        handle.write("[safe]\n\tdirectory = *\n")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    for name in ("XDG_CONFIG_HOME", "EMAIL"):
        environment.pop(name, None)
    environment.update({
        "HOME": home,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": global_config,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
        "LC_ALL": "C",
        **IDENTITY,
    })
    return environment


def repository_owner(git_dir: Path | None) -> tuple[int, int] | None:
    """Return the UID and GID to run git as: the repository's owner when orchestrate runs as root, else None.

    Objects and refs that root wrote into a user's repository would belong to root, and the user's own git
    could then no longer write next to them.
    """
    if git_dir is None or os.geteuid() != 0:
        return None
    try:
        info = os.stat(git_dir)
    except OSError:
        return None
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def _as_owner(owner: tuple[int, int] | None, home: str) -> dict[str, Any]:
    """Return the subprocess arguments that run a command as `owner`, who also gets the empty HOME."""
    if owner is None:
        return {}
    os.chown(home, *owner)
    return {"user": owner[0], "group": owner[1], "extra_groups": []}


def git(
    git_dir: Path | None,
    *args: str,
    input_data: bytes | None = None,
    cwd: Path | None = None,
    extra_env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `git --git-dir=GIT_DIR ARGS` with the safe environment; raise GitFailed on a non-zero exit.

    `git_dir` is None only for commands that make a new repository, such as `clone`.
    """
    with tempfile.TemporaryDirectory(prefix="orchestrate-git-home-") as home:
        command = ["git", *SAFE_OPTIONS]
        if git_dir is not None:
            command.append(f"--git-dir={git_dir}")
        command.extend(args)
        owner = _as_owner(repository_owner(git_dir), home)
        environment = _environment(home)
        environment.update(extra_env or {})
        try:
            completed = subprocess.run(
                command, input=input_data, capture_output=True, env=environment, timeout=GIT_TIMEOUT, check=False,
                # An empty folder as the working directory, so no command finds a repository by searching upwards.
                cwd=cwd or home, **owner,
            )
        except FileNotFoundError as exc:
            raise GitFailed("git is not installed on this machine; install it (`apt-get install git`)") from exc
        except subprocess.TimeoutExpired as exc:
            raise GitFailed(f"`git {_shown(args)}` timed out after {GIT_TIMEOUT:g} s in {git_dir or cwd}") from exc
    if check and completed.returncode != 0:
        error = completed.stderr.decode(errors="replace").strip() or f"exit code {completed.returncode}"
        raise GitFailed(f"`git {_shown(args)}` failed in {git_dir or cwd}: {error}")
    return completed


def git_text(git_dir: Path, *args: str) -> str:
    return git(git_dir, *args).stdout.decode(errors="replace").strip()


def _shown(args: Sequence[str]) -> str:
    text = " ".join(args)
    return text if len(text) < 200 else text[:200] + "..."


def find_git_dir(source: Path) -> Path | None:
    """Return the git folder of a repository whose top level is `source`, or None for any other folder.

    Only `source/.git` counts: a folder inside a repository is copied as plain files. `rev-parse` reads that
    `.git` (a folder, or the file of a linked worktree), which belongs to the user, not to an agent.
    """
    dot_git = source / ".git"
    if not (dot_git.is_dir() or dot_git.is_file()) or dot_git.is_symlink():
        return None
    completed = git(None, "rev-parse", "--absolute-git-dir", cwd=source, check=False)
    if completed.returncode != 0:
        return None
    return Path(completed.stdout.decode().strip())


def head_commit(git_dir: Path) -> str | None:
    """Return the commit HEAD points at, or None in a repository with no commit yet; raise GitFailed otherwise."""
    completed = git(git_dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    if completed.returncode == 0:
        return completed.stdout.decode().strip()
    error = completed.stderr.decode(errors="replace").strip()
    if error:
        # --quiet silences only a missing HEAD, so any message is another failure, such as a permission.
        raise GitFailed(f"`git rev-parse HEAD` failed in {git_dir}: {error}")
    return None


def common_dir(git_dir: Path) -> Path:
    """Return the folder that contains the repository's objects and refs, shared by all its worktrees."""
    text = git_text(git_dir, "rev-parse", "--git-common-dir")
    path = Path(text)
    return path if path.is_absolute() else (git_dir / path).resolve()


@contextmanager
def repository_lock(git_dir: Path) -> Iterator[None]:
    """Hold the cross-process lock of one repository; its file lives in the repository's common git folder."""
    path = common_dir(git_dir) / LOCK_NAME
    lock = filelock.FileLock(str(path), timeout=LOCK_TIMEOUT, mode=0o664)
    try:
        with lock:
            owner = repository_owner(git_dir)
            if owner is not None:
                os.chown(path, *owner)
            yield
    except filelock.Timeout as exc:
        raise GitFailed(
            f"another orchestrate process has held {lock.lock_file} for {LOCK_TIMEOUT:g} s; "
            "wait for it to finish, or delete the file if no orchestrate process runs"
        ) from exc


def git_stream(git_dir: Path, args: Sequence[str], chunks: Iterable[bytes]) -> None:
    """Run a git command that reads a stream on standard input (`fast-import`), writing `chunks` as they come."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-git-home-") as home, \
            tempfile.TemporaryFile() as errors:
        command = ["git", *SAFE_OPTIONS, f"--git-dir={git_dir}", *args]
        owner = _as_owner(repository_owner(git_dir), home)
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                   env=_environment(home), cwd=home, **owner)
        assert process.stdin is not None
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
            code = process.wait(timeout=GIT_TIMEOUT)
        except BrokenPipeError:
            code = process.wait(timeout=GIT_TIMEOUT)
        except BaseException:
            process.kill()
            process.wait()
            raise
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
    if code != 0:
        raise GitFailed(f"`git {_shown(args)}` failed in {git_dir}: {message or f'exit code {code}'}")
