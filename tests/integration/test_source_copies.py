"""Private source copies on a real engine: conflicts while agents run, merge, and what agents cannot reach."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from .conftest import BASE_IMAGE, TEST_LABEL, Project, run_result

GIT_IMAGE = "orchestrate-test/git:latest"
HOLD = "sleep 120"


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def host_git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, f"git {' '.join(args)}: {completed.stderr}"
    return completed.stdout


def make_repository(source: Path, files: dict[str, str]) -> None:
    """Turn the project's source folder into a git repository with one commit of `files`."""
    host_git(source, "init", "--quiet", "--initial-branch=main")
    host_git(source, "config", "user.name", "Test User")
    host_git(source, "config", "user.email", "test@example.invalid")
    for name, text in files.items():
        (source / name).write_text(text, encoding="utf-8")
    host_git(source, "add", "--all")
    host_git(source, "commit", "--quiet", "-m", "start")


def copy_manifest(project: Project, agents: list[dict[str, Any]], **fields: Any) -> Path:
    return project.manifest(agents, source={"path": str(project.source), "mode": "copy"}, **fields)


def working_tree_digest(repo: Path) -> dict[str, str]:
    """Return a digest of every file and link outside .git, plus the checkout's HEAD, index and config."""
    digest = {}
    for folder, folders, files in os.walk(repo):
        folders[:] = [name for name in folders if not (folder == str(repo) and name == ".git")]
        for name in files + [name for name in folders if os.path.islink(os.path.join(folder, name))]:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, repo)
            if os.path.islink(path):
                digest[relative] = "link:" + os.readlink(path)
            else:
                digest[relative] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    for name in ("HEAD", "index", "config"):
        digest[f".git/{name}"] = hashlib.sha256((repo / ".git" / name).read_bytes()).hexdigest()
    digest["checked out"] = host_git(repo, "symbolic-ref", "HEAD") + host_git(repo, "rev-parse", "HEAD")
    return digest


@pytest.fixture(scope="session")
def git_image(docker_client: docker.DockerClient) -> str:
    """Build an image with git from the base image and the host's git binary, offline."""
    try:
        docker_client.images.get(GIT_IMAGE)
        return GIT_IMAGE
    except docker.errors.ImageNotFound:
        pass
    git_binary = shutil.which("git")
    assert git_binary is not None, "git is missing on the host; install it"
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(git_binary, Path(context) / "git")
        (Path(context) / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY git /usr/bin/git\n", encoding="utf-8")
        docker_client.images.build(path=context, tag=GIT_IMAGE, labels={TEST_LABEL: "git"}, rm=True)
    return GIT_IMAGE


@pytest.fixture
def repo_project(project: Project) -> Iterator[Project]:
    make_repository(project.source, {"a.txt": "alpha start\n", "b.txt": "beta start\n", "c.txt": "user\n"})
    yield project


def test_same_file_conflicts_while_running(repo_project: Project) -> None:
    edit = sh(f"echo $ORCHESTRATE_AGENT >> /workspace/src/a.txt; {HOLD}")
    manifest = copy_manifest(repo_project, [{"name": "alpha", "command": edit}, {"name": "beta", "command": edit}])

    started = time.monotonic()
    code, result = repo_project.run_json(manifest)
    elapsed = time.monotonic() - started

    assert code == 3, result
    assert result["stopped_by"]["kind"] == "write-conflict"
    assert result["stopped_by"]["subject"] == "/workspace/src/a.txt"
    # Found while both ran: neither reached the end of its two-minute sleep.
    assert elapsed < 60


def test_different_files_merge_both(repo_project: Project) -> None:
    source = repo_project.source
    (source / "c.txt").write_text("user's uncommitted edit\n", encoding="utf-8")
    (source / "untracked.txt").write_text("user's new file\n", encoding="utf-8")
    before = working_tree_digest(source)
    status_before = host_git(source, "status", "--porcelain")
    manifest = copy_manifest(repo_project, [
        {"name": "alpha", "command": sh("echo alpha line >> /workspace/src/a.txt")},
        {"name": "beta", "command": sh("echo beta line >> /workspace/src/b.txt; echo new > /workspace/src/new.txt")},
    ])

    code, result = repo_project.run_json(manifest)
    assert code == 0, result
    merged = repo_project.orchestrate("merge", result["run_id"], "--runs-dir", str(repo_project.runs),
                                      "--branch", "agents-result", "--json")

    assert merged.returncode == 0, merged.stdout + merged.stderr
    outcomes = {item["agent"]: item["outcome"] for item in json.loads(merged.stdout)["agents"]}
    assert outcomes == {"alpha": "applied", "beta": "applied"}
    history = host_git(source, "log", "--format=%an|%s", "agents-result").splitlines()
    assert history[0].startswith("orchestrate agent beta|")
    assert history[1].startswith("orchestrate agent alpha|")
    assert history[2] == "Test User|start"
    assert host_git(source, "show", "agents-result:a.txt") == "alpha start\nalpha line\n"
    assert host_git(source, "show", "agents-result:b.txt") == "beta start\nbeta line\n"
    assert host_git(source, "show", "agents-result:new.txt") == "new\n"
    assert working_tree_digest(source) == before
    assert host_git(source, "status", "--porcelain") == status_before

    cleaned = repo_project.orchestrate("cleanup", result["run_id"], "--runs-dir", str(repo_project.runs),
                                       "--remove-files")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not Path(result["run_dir"]).exists()
    assert host_git(source, "for-each-ref", "refs/orchestrate") == ""
    assert host_git(source, "show", "agents-result:a.txt") == "alpha start\nalpha line\n"


def test_conflicting_agent_skipped_without_markers(repo_project: Project) -> None:
    source = repo_project.source
    manifest = copy_manifest(repo_project, [
        {"name": "alpha", "command": sh("echo alpha > /workspace/src/a.txt")},
        {"name": "beta", "command": sh("sleep 3; echo beta > /workspace/src/a.txt; echo b >> /workspace/src/b.txt")},
    ], policy={"write-conflict": "warn"})

    code, result = repo_project.run_json(manifest)
    assert code == 0, result
    merged = repo_project.orchestrate("merge", result["run_id"], "--runs-dir", str(repo_project.runs), "--json")

    assert merged.returncode == 1, merged.stdout + merged.stderr
    report = json.loads(merged.stdout)
    items = {item["agent"]: item for item in report["agents"]}
    assert items["alpha"]["outcome"] == "applied"
    assert items["beta"]["outcome"] == "conflict"
    assert items["beta"]["files"] == ["a.txt"]
    target = report["target"]
    assert host_git(source, "show", f"{target}:a.txt") == "alpha\n"
    assert "<<<<<<<" not in host_git(source, "show", f"{target}:b.txt")
    assert host_git(source, "show", f"{target}:b.txt") == "beta start\n"


def test_checked_out_branch_rejected(repo_project: Project) -> None:
    manifest = copy_manifest(repo_project, [{"name": "alpha", "command": sh("echo x >> /workspace/src/a.txt")}])
    code, result = repo_project.run_json(manifest)
    assert code == 0, result
    head = host_git(repo_project.source, "rev-parse", "main")

    merged = repo_project.orchestrate("merge", result["run_id"], "--runs-dir", str(repo_project.runs),
                                      "--branch", "main")

    assert merged.returncode == 2, merged.stdout + merged.stderr
    assert "checked out" in merged.stderr
    assert "Traceback" not in merged.stderr
    assert host_git(repo_project.source, "rev-parse", "main") == head


def test_reset_and_clean_leave_user_untouched(repo_project: Project, git_image: str) -> None:
    source = repo_project.source
    (source / "ignored.log").write_text("ignored\n", encoding="utf-8")
    (source / ".gitignore").write_text("*.log\n", encoding="utf-8")
    (source / "untracked.txt").write_text("mine\n", encoding="utf-8")
    (source / "a.txt").write_text("uncommitted\n", encoding="utf-8")
    before = working_tree_digest(source)
    script = (
        "cd /workspace/src && echo junk > a.txt && echo junk > junk.log && "
        "git reset --hard && git clean -fdx && rm -rf ./* .gitignore && "
        "git status --short; git log --oneline; ls -la"
    )
    manifest = copy_manifest(repo_project, [{"name": "wrecker", "command": sh(script), "image": git_image}])

    code, result = repo_project.run_json(manifest)

    assert code == 0, result
    log = (Path(result["run_dir"]) / "agents" / "wrecker.log").read_text(encoding="utf-8")
    assert "HEAD is now at" in log, log
    assert working_tree_digest(source) == before
    assert (source / "a.txt").read_text(encoding="utf-8") == "uncommitted\n"
    fsck = subprocess.run(["git", "-C", str(source), "fsck"], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stderr


def test_copy_git_leads_nowhere_writable(repo_project: Project) -> None:
    source = repo_project.source
    # The agent looks for the user's repository path in every file of its .git and tries to write there.
    probe = (
        "import os, sys\n"
        "target = sys.argv[1]\n"
        "found = []\n"
        "for folder, _, files in os.walk('/workspace/src/.git'):\n"
        "    for name in files:\n"
        "        path = os.path.join(folder, name)\n"
        "        if target.encode() in open(path, 'rb').read():\n"
        "            found.append(path)\n"
        "print('dotgit-is-dir', os.path.isdir('/workspace/src/.git'))\n"
        "print('mentions', found)\n"
        "for attempt in ('.git/HEAD', '.git/hooks/post-checkout', '.git/config', 'a.txt'):\n"
        "    try:\n"
        "        with open(os.path.join(target, attempt), 'a') as handle:\n"
        "            handle.write('pwned')\n"
        "        print('WROTE', attempt)\n"
        "    except OSError as exc:\n"
        "        print('blocked', attempt, exc.errno)\n"
    )
    before = working_tree_digest(source)
    manifest = copy_manifest(repo_project, [
        {"name": "prober", "command": ["python3", "-c", probe, str(source)]},
    ])

    code, result = repo_project.run_json(manifest)

    assert code == 0, result
    log = (Path(result["run_dir"]) / "agents" / "prober.log").read_text(encoding="utf-8")
    assert "dotgit-is-dir True" in log
    assert "mentions []" in log
    assert "WROTE" not in log
    assert log.count("blocked") == 4
    assert not (source / ".git" / "hooks" / "post-checkout").exists()
    assert working_tree_digest(source) == before
    copy = Path(result["run_dir"]) / "copies" / "prober"
    assert host_git(copy, "-c", "safe.directory=*", "remote") == ""
    for name in ("a.txt", "b.txt"):
        mine, theirs = os.stat(source / name), os.stat(copy / name)
        assert (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino)


def test_two_runs_at_once_keep_repository_sound(repo_project: Project) -> None:
    first = copy_manifest(repo_project, [
        {"name": "alpha", "command": sh("for i in 1 2 3; do echo $i >> /workspace/src/a.txt; done")},
        {"name": "beta", "command": sh("echo beta >> /workspace/src/b.txt")},
    ])
    second = first.with_name("second.yaml")
    shutil.copy(first, second)

    processes = [repo_project.start("run", str(path), "--runs-dir", str(repo_project.runs), "--json")
                 for path in (first, second)]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stdout + stderr
        results.append(run_result(stdout))
    merges = [repo_project.start("merge", result["run_id"], "--runs-dir", str(repo_project.runs), "--branches")
              for result in results]
    for process in merges:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stdout + stderr

    fsck = subprocess.run(["git", "-C", str(repo_project.source), "fsck", "--strict"], capture_output=True,
                          text=True, check=False)
    assert fsck.returncode == 0, fsck.stderr
    branches = host_git(repo_project.source, "branch", "--list", "orchestrate/*").split()
    assert len(branches) == 4
    refs = host_git(repo_project.source, "for-each-ref", "--format=%(refname)", "refs/orchestrate/runs").split()
    assert len(refs) == 4


def test_planted_git_config_never_runs_on_host(repo_project: Project, tmp_path: Path) -> None:
    sentinel = tmp_path / "host-sentinel"
    command = f"touch {sentinel}"
    hook = f"#!/bin/sh\\n{command}\\n"
    script = "; ".join([
        "cd /workspace/src",
        *(f"printf '{hook}' > .git/hooks/{name}; chmod +x .git/hooks/{name}"
          for name in ("pre-commit", "post-commit", "post-checkout", "post-merge", "reference-transaction",
                       "pre-auto-gc", "post-index-change", "fsmonitor-watchman")),
        "printf '[core]\\n\\tfsmonitor = " + command + "\\n\\thooksPath = .git/hooks\\n"
        "[filter \"evil\"]\\n\\tclean = " + command + "\\n\\tsmudge = " + command + "\\n\\trequired = true\\n"
        "[diff \"evil\"]\\n\\ttextconv = " + command + "\\n\\tcommand = " + command + "\\n"
        "[merge \"evil\"]\\n\\tdriver = " + command + "\\n' >> .git/config",
        "printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes",
        "mkdir -p .git/info; cp .gitattributes .git/info/attributes",
        "echo agent >> a.txt",
        "ln -s /etc/passwd passwd-link",
        "mkdir -p sub/.git && printf '[core]\\n\\tfsmonitor = " + command + "\\n' > sub/.git/config",
    ])
    manifest = copy_manifest(repo_project, [{"name": "planter", "command": sh(script)}])
    runs = str(repo_project.runs)

    code, result = repo_project.run_json(manifest)
    assert code == 0, result
    run_id = result["run_id"]
    shown = repo_project.orchestrate("diff", run_id, "--runs-dir", runs)
    assert shown.returncode == 0, shown.stderr
    merged = repo_project.orchestrate("merge", run_id, "--runs-dir", runs)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    branched = repo_project.orchestrate("merge", run_id, "--runs-dir", runs, "--branches")
    assert branched.returncode == 0, branched.stdout + branched.stderr

    assert not sentinel.exists()
    assert "+agent" in shown.stdout
    assert "root:x:0:0" not in shown.stdout
    assert "sub/.git" not in shown.stdout
    tree = host_git(repo_project.source, "ls-tree", "-r", f"orchestrate/{run_id}-merged")
    assert "120000" in next(line for line in tree.splitlines() if line.endswith("passwd-link"))
    assert ".git/" not in tree
    # Control: host git pointed at the copy, as a careless tool would do, runs the agent's command.
    copy = Path(result["run_dir"]) / "copies" / "planter"
    subprocess.run(["git", "-c", "safe.directory=*", "-C", str(copy), "status"], capture_output=True, check=False)
    assert sentinel.exists()


def test_hostile_copy_leaves_repository_sound(repo_project: Project) -> None:
    # A chmod alone is a change git records, so the edit of the same file by another agent is a conflict.
    # The .gitmodules would fail git fsck of the whole repository, and the deep file lies past the walk.
    source = repo_project.source
    deep = "/".join(["d"] * 70)
    hostile = sh(
        "cd /workspace/src && chmod +x a.txt && "
        "printf '[submodule \"../../x\"]\\n\\tpath = lib\\n\\turl = -u./payload\\n' > .gitmodules && "
        f"mkdir -p {deep} && echo deep > {deep}/deep.txt; {HOLD}"
    )
    editor = sh(f"sleep 1; echo edited >> /workspace/src/a.txt; {HOLD}")
    manifest = copy_manifest(repo_project, [{"name": "hostile", "command": hostile},
                                            {"name": "editor", "command": editor}])

    code, result = repo_project.run_json(manifest)
    assert code == 3, result
    assert result["stopped_by"]["kind"] == "write-conflict"
    assert result["stopped_by"]["subject"] == "/workspace/src/a.txt"
    merged = repo_project.orchestrate("merge", result["run_id"], "--runs-dir", str(repo_project.runs), "--json")

    assert merged.returncode == 0, merged.stdout + merged.stderr
    target = f"orchestrate/{result['run_id']}-merged"
    tree = host_git(source, "ls-tree", "-r", target)
    assert ".gitmodules" not in tree
    assert "d/d/" not in tree
    assert next(line for line in tree.splitlines() if line.endswith("a.txt")).startswith("100755")
    assert host_git(source, "show", f"{target}:a.txt") == "alpha start\nedited\n"
    fsck = subprocess.run(["git", "-C", str(source), "fsck", "--strict"], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stderr
