"""git in the profile images: installed from fetched .deb files, usable by the agent under the sandbox.

The test image is built from the git stage of the claude-code profile's own Dockerfile, with the .deb
files that orchestrate fetches for the profile images, so it needs no agent CLI from npm or PyPI.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import docker
import docker.errors
import pytest

from orchestrator import debian_packages
from orchestrator.profile_images import AGENT_DEBS, add_debs, cache_dir, image_for

from .conftest import BASE_IMAGE, TEST_LABEL, Project
from .test_source_copies import host_git, make_repository

LAST_STAGE_LINE = "COPY --from=debs /staging/ /"


def git_stage(dockerfile: str) -> str:
    """Return the Dockerfile's lines up to the one that copies the staged git files into the image."""
    head, found, _tail = dockerfile.partition(LAST_STAGE_LINE)
    assert found, f"the profile Dockerfile has no line {LAST_STAGE_LINE!r}"
    return head + found + "\n"


@pytest.fixture(scope="session")
def git_profile_image(docker_client: docker.DockerClient) -> str:
    """Build an image of the base plus the profile images' git stage; return its tag."""
    dockerfile = git_stage((image_for("claude-code").recipe.context / "Dockerfile").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as scratch:
        release, status = debian_packages.read_base_packages(docker_client, BASE_IMAGE, Path(scratch))
        debian_packages.check_same_release(host=debian_packages.host_release(), base=release)
        debs = debian_packages.fetch(AGENT_DEBS, base_status=status, cache=cache_dir() / "deb")

        context = Path(scratch) / "context"
        (context / "packages").mkdir(parents=True)
        add_debs(debs, context / "packages" / "debs")
        (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        digest = hashlib.sha256(dockerfile.encode())
        for path in sorted((context / "packages" / "debs").iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        tag = f"orchestrate-test/profile-git:{digest.hexdigest()[:16]}"
        try:
            docker_client.images.get(tag)
        except docker.errors.ImageNotFound:
            docker_client.images.build(path=str(context), tag=tag, labels={TEST_LABEL: "profile-git"}, rm=True,
                                       forcerm=True, network_mode="none")
    return tag


def test_git_image_keeps_hardening(docker_client: docker.DockerClient, git_profile_image: str) -> None:
    # Root inside a throw-away container with no network, so that find can read every folder.
    script = ("find / -xdev -type f -perm /6000; echo ---; find / -xdev -name '*.deb'; echo ---; "
              "ls /var/log/dpkg.log /var/cache/apt/archives 2>/dev/null; echo ---; dpkg-query -W git")
    output = docker_client.containers.run(git_profile_image, ["sh", "-c", script], user="0", remove=True,
                                          network_disabled=True, labels={TEST_LABEL: "profile-git"}).decode()
    setuid, debs, dpkg_leftovers, installed = output.split("---\n")

    assert setuid == ""
    assert debs == ""
    assert dpkg_leftovers == ""
    assert installed.startswith("git\t1:2.39")


def test_agent_commits_in_source_copy(project: Project, git_profile_image: str) -> None:
    make_repository(project.source, {"a.txt": "start\n"})
    head = host_git(project.source, "rev-parse", "HEAD")
    script = ("cd /workspace/src && git --version && echo edit >> a.txt && git commit -q -am 'agent edit' "
              "&& git log --format='%an <%ae>|%s' > /workspace/output/log.txt")
    manifest = project.manifest([{"name": "coder", "image": git_profile_image, "workdir": "/workspace/src",
                                  "command": ["sh", "-c", script]}],
                                source={"path": str(project.source), "mode": "copy"})

    code, result = project.run_json(manifest)

    assert code == 0, json.dumps(result, indent=2)
    log = (project.root / "generated" / "log.txt").read_text(encoding="utf-8")
    assert log.splitlines()[0] == "orchestrate agent <agent@orchestrate.invalid>|agent edit"
    # The agent's commit stays in its copy; your repository is where it was.
    assert host_git(project.source, "rev-parse", "HEAD") == head


def test_agent_reads_read_only_repository(project: Project, git_profile_image: str) -> None:
    make_repository(project.source, {"a.txt": "start\n"})
    script = "git -C /workspace/src log --format=%s > /workspace/output/log.txt"
    manifest = project.manifest([{"name": "reader", "image": git_profile_image, "command": ["sh", "-c", script]}])

    code, result = project.run_json(manifest)

    assert code == 0, json.dumps(result, indent=2)
    assert (project.root / "generated" / "log.txt").read_text(encoding="utf-8") == "start\n"
