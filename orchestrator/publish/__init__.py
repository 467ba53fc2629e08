"""Publish an agent's workspace into the shared output tree: claimed, locked, atomic, recorded.

Publishing runs in two phases. Staging copies every publishable file out of
the workspace into a private folder on the output tree's file system and
flushes it to disk once. Committing then takes each path's lock, decides by
the ledger whether this agent may write the path, moves the staged file into
place with one rename, records it in the ledger and releases the lock. A
crash or a full disk therefore leaves each path with its old content or its
new content, never a part of either.

An exclusive path belongs to the first owner (manifest name and agent) that
published it. Another owner's version is a write conflict, kept as evidence
under the run's `conflicts/` folder. An append path gets each
distinct content of each owner once, in the order the lock was taken, so a
rerun with unchanged results does not repeat them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..claims import Claim
from ..layout import STATE_FOLDER
from .fsops import (
    UnsafePath,
    exchange,
    open_child_directory,
    open_directory,
    read_regular_file,
    sync_filesystem,
    write_new_file,
)
from .ledger import Ledger
from .locks import DEFAULT_LOCK_TIMEOUT, LockDenied, LockRoom, PublishError, denied_message, make_shared_folder
from .model import WRITE_CONFLICT, Finding, Published, PublishLimits, PublishReport, SharedMode, Staged
from .stage import stage_workspace

__all__ = [
    "PublishError",
    "PublishLimits",
    "PublishReport",
    "PublishRequest",
    "check_workspace",
    "publish_agent",
    "state_folder",
]


@dataclass(frozen=True)
class PublishRequest:
    output: Path
    run_id: str
    run_dir: Path
    # The owner of exclusive paths is "<manifest name>/<agent>", so a rerun of the same agent updates its files.
    manifest_name: str
    agent: str
    workspace: Path
    claims: Sequence[str]
    shared: Sequence[tuple[str, SharedMode]]
    limits: PublishLimits
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    # Publish only these workspace paths (files closed while the agent runs); None publishes everything.
    only: frozenset[str] | None = None

    @property
    def owner(self) -> str:
        return f"{self.manifest_name}/{self.agent}"


MAX_OPEN_FOLDERS = 256
_RUN_START = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]+$")


def run_start(run_id: str) -> str | None:
    """Return the UTC start stamp (YYYYmmdd-HHMMSS) that a run id carries, or None."""
    match = _RUN_START.search(run_id)
    return match.group(1) if match else None


def _remove_abandoned_staging(parent: Path) -> None:
    """Delete staging folders of publishers that died; each name ends with the publisher's PID and a tag."""
    for folder in parent.iterdir():
        parts = folder.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # The process exists, under another user.


def _exists(folder_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def state_folder(output: Path) -> Path:
    return output / STATE_FOLDER


def check_workspace(request: PublishRequest) -> PublishReport:
    """Collect the findings of a workspace without publishing it, for agents that did not succeed."""
    started = time.monotonic()
    _staged, findings, notices = _stage(request, None)
    return PublishReport(agent=request.agent, findings=findings, notices=notices, seconds=time.monotonic() - started)


def _stage(request: PublishRequest, staging_fd: int | None) -> tuple[list[Staged], list[Finding], list[str]]:
    return stage_workspace(
        request.workspace,
        staging_fd,
        claims=[Claim.parse(pattern) for pattern in request.claims],
        shared=[(Claim.parse(pattern), mode) for pattern, mode in request.shared],
        limits=request.limits,
        only=request.only,
    )


def publish_agent(request: PublishRequest) -> PublishReport:
    """Publish every file of one agent's workspace; return what was published and every finding."""
    started = time.monotonic()
    report = PublishReport(agent=request.agent)
    state = state_folder(request.output)
    staging = state / "staging" / f"{request.run_id}-{request.agent}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        request.output.mkdir(parents=True, exist_ok=True)
        room = LockRoom(state, run_id=request.run_id, timeout=request.lock_timeout)
        room.register([request.agent])
        make_shared_folder(staging.parent)
        _remove_abandoned_staging(staging.parent)
        staging.mkdir(mode=0o700)
        ledger = Ledger(state, room)
        ledger.open()
        staging_fd = open_directory(staging)
    except PermissionError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LockDenied(denied_message(Path(exc.filename or state), "write")) from exc
    try:
        staged, findings, notices = _stage(request, staging_fd)
        report.findings.extend(findings)
        report.notices.extend(notices)
        sync_filesystem(staging_fd)

        output_fd = open_directory(request.output)
        committer = _Committer(request, room, ledger, staging_fd, output_fd, report)
        try:
            for item in staged:
                committer.commit(item)
        finally:
            committer.close()
            os.close(output_fd)
    except UnsafePath as exc:
        raise PublishError(f"publishing agent {request.agent} stopped: {exc}; nothing more was published") from exc
    except OSError as exc:
        raise PublishError(
            f"publishing agent {request.agent} into {request.output} failed: {exc.strerror or exc}"
            + ("; free some disk space and publish again" if exc.errno == errno.ENOSPC else "")
        ) from exc
    finally:
        os.close(staging_fd)
        ledger.close()
        room.unregister()
        shutil.rmtree(staging, ignore_errors=True)

    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Committer:
    request: PublishRequest
    room: LockRoom
    ledger: Ledger
    staging_fd: int
    output_fd: int
    report: PublishReport
    # Output folders opened during this publish, by their path components; () is the output tree.
    folders: dict[tuple[str, ...], int] = field(default_factory=dict)

    def commit(self, item: Staged) -> None:
        with self.room.hold(item.path):
            self.ledger.refresh()
            try:
                folder_fd = self._folder(item.parts[:-1])
            except UnsafePath as exc:
                self._conflict(item, f"the output tree has a symlink or file where a folder belongs ({exc})")
                return
            self._commit_in(item, folder_fd)

    def _folder(self, parts: tuple[str, ...]) -> int:
        """Open (creating) the output folder `parts`, one component at a time, reusing open folders."""
        known = len(parts)
        while known > 0 and parts[:known] not in self.folders:
            known -= 1
        fd = self.folders[parts[:known]] if known else self.output_fd
        for depth in range(known, len(parts)):
            fd = open_child_directory(fd, parts[depth], create=True)
            self.folders[parts[: depth + 1]] = fd
        if len(self.folders) > MAX_OPEN_FOLDERS:
            self._close_folders(keep=parts)
        return fd

    def _close_folders(self, *, keep: tuple[str, ...]) -> None:
        # Bounds the descriptors one publish holds; the folders of `keep` stay open for the caller.
        for key in [key for key in self.folders if keep[: len(key)] != key]:
            os.close(self.folders.pop(key))

    def close(self) -> None:
        for fd in self.folders.values():
            os.close(fd)
        self.folders.clear()

    def _commit_in(self, item: Staged, folder_fd: int) -> None:
        name = item.parts[-1]
        try:
            existing = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            self._conflict(item, "the output tree has a folder, symlink or special file at this path")
            return

        if item.shared_mode == "append":
            self._append(item, folder_fd, name, existing)
            return

        owner = self.ledger.owner_of(item.path)
        # Ownership outlives the file: deleting an owner's file does not hand its path to another agent.
        if owner is not None and owner != self.request.owner:
            self._conflict(item, f"the path belongs to {owner}")
            return
        if owner is None and self.ledger.has_any_contribution(item.path):
            self._conflict(item, "the path is an append path of other agents, not an exclusive one")
            return
        if existing is not None and owner is None:
            self._conflict(item, "the file exists but orchestrate never published it (it is not in the ledger)")
            return
        newer = self._newer_run(item.path)
        if existing is not None and newer is not None:
            os.unlink(item.staged_name, dir_fd=self.staging_fd)
            self.report.notices.append(f"{item.path}: kept the version from the later run {newer}")
            self.report.published.append(Published(item.path, "unchanged", item.sha256, item.size))
            return
        if existing is not None and self._same_content(folder_fd, name, item):
            os.unlink(item.staged_name, dir_fd=self.staging_fd)
            self.report.published.append(Published(item.path, "unchanged", item.sha256, item.size))
            return

        action = "created" if existing is None else "replaced"
        try:
            self._swap_in(item.staged_name, self.staging_fd, name, folder_fd, replacing=existing is not None,
                          record=lambda: self._record(item, action))
        except (IsADirectoryError, NotADirectoryError) as exc:
            self._conflict(item, f"the output tree changed under this path during the publish ({exc.strerror})")

    def _swap_in(
        self, source: str, source_fd: int, name: str, folder_fd: int, *, replacing: bool, record: Callable[[], None]
    ) -> None:
        """Move `source` to `name`, then record it; if the record fails (a full disk), undo the move.

        A replaced file is swapped out with renameat2's exchange, which readers see as one step.
        The old file then survives under the source name until the record is written, so it can
        be swapped back.
        """
        swapped = replacing and exchange(source_fd, source, folder_fd, name)
        if not swapped:
            os.rename(source, name, src_dir_fd=source_fd, dst_dir_fd=folder_fd)
        try:
            record()
        except BaseException:
            if swapped:
                exchange(source_fd, source, folder_fd, name)
            elif not replacing:
                os.unlink(name, dir_fd=folder_fd)
            # NOTE: without renameat2 a replaced file cannot be put back after a failed record.
            raise
        if swapped:
            os.unlink(source, dir_fd=source_fd)

    def _append(self, item: Staged, folder_fd: int, name: str, existing: os.stat_result | None) -> None:
        owner = self.ledger.owner_of(item.path)
        if owner is not None:
            self._conflict(item, f"the path is an exclusive path of {owner}, not an append path")
            return
        if self.ledger.has_contribution(item.path, owner=self.request.owner, sha256=item.sha256):
            os.unlink(item.staged_name, dir_fd=self.staging_fd)
            self.report.published.append(Published(item.path, "unchanged", item.sha256, item.size))
            return

        contribution, _info = read_regular_file(self.staging_fd, item.staged_name, max_bytes=item.size)
        current = b""
        if existing is not None:
            current, _info = read_regular_file(folder_fd, name, max_bytes=existing.st_size + (1 << 20))
        if current and not current.endswith(b"\n"):
            current += b"\n"

        temporary = write_new_file(folder_fd, current + contribution, mode=0o644)
        try:
            fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(temporary, dir_fd=folder_fd)
            raise
        try:
            self._swap_in(temporary, folder_fd, name, folder_fd, replacing=existing is not None,
                          record=lambda: self._record(item, "appended"))
        except BaseException:
            if _exists(folder_fd, temporary):
                os.unlink(temporary, dir_fd=folder_fd)
            raise
        os.unlink(item.staged_name, dir_fd=self.staging_fd)

    def _newer_run(self, path: str) -> str | None:
        """Return the run that last published `path` when it started after this one; None otherwise."""
        latest = self.ledger.latest_runs.get(path)
        if latest is None or latest == self.request.run_id:
            return None
        latest_start, own_start = run_start(latest), run_start(self.request.run_id)
        if latest_start is None or own_start is None or latest_start <= own_start:
            return None
        return latest

    def _same_content(self, folder_fd: int, name: str, item: Staged) -> bool:
        try:
            data, _info = read_regular_file(folder_fd, name, max_bytes=item.size)
        except (OSError, UnsafePath):
            return False
        same_mode = self._mode_of(folder_fd, name) == item.mode
        return same_mode and len(data) == item.size and hashlib.sha256(data).hexdigest() == item.sha256

    @staticmethod
    def _mode_of(folder_fd: int, name: str) -> int:
        return stat.S_IMODE(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)

    def _record(self, item: Staged, action: str) -> None:
        self.ledger.append(
            {
                "path": item.path,
                "run": self.request.run_id,
                "agent": self.request.agent,
                "owner": self.request.owner,
                "sha256": item.sha256,
                "size": item.size,
                "mode": f"{item.mode:o}",
                "action": action,
            }
        )
        self.report.published.append(Published(item.path, action, item.sha256, item.size))  # type: ignore[arg-type]

    def _conflict(self, item: Staged, reason: str) -> None:
        """Keep the rejected version as evidence under the run folder and report a write conflict."""
        evidence = self.request.run_dir / "conflicts" / self.request.agent / Path(*item.parts)
        try:
            evidence.parent.mkdir(parents=True, exist_ok=True)
            data, _info = read_regular_file(self.staging_fd, item.staged_name, max_bytes=item.size)
            evidence.write_bytes(data)
            evidence_note = f"this agent's version is kept at {evidence}"
        except OSError as exc:
            evidence_note = f"this agent's version could not be kept ({exc.strerror})"
        os.unlink(item.staged_name, dir_fd=self.staging_fd)
        detail = f"{reason}; {evidence_note}"
        self.report.findings.append(Finding(WRITE_CONFLICT, item.path, detail))
