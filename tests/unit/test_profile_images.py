"""Build contexts of the profile images, made from packages already in the cache (no registry)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import EnvironmentProblem, InputError
from orchestrator.profile_images import NpmProgram, image_for, prepare_context


def write_npm_tarball(cache: Path, program: NpmProgram, members: dict[str, bytes]) -> None:
    folder = cache / "npm"
    folder.mkdir(parents=True, exist_ok=True)
    name = program.package.lstrip("@").replace("/", "-")
    with tarfile.open(folder / f"{name}-{program.version}.tgz", "w:gz") as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_context_holds_native_program(tmp_path: Path) -> None:
    image = image_for("claude-code")
    program = image.programs[0]
    assert isinstance(program, NpmProgram)
    write_npm_tarball(tmp_path / "cache", program, {program.member: b"#!/bin/sh\necho stand-in\n"})

    context = prepare_context(image, tmp_path / "scratch", cache=tmp_path / "cache")

    binary = context / "packages" / "claude"
    assert binary.read_bytes() == b"#!/bin/sh\necho stand-in\n"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert (context / "Dockerfile").is_file()


def test_context_rejects_changed_package_layout(tmp_path: Path) -> None:
    image = image_for("claude-code")
    program = image.programs[0]
    assert isinstance(program, NpmProgram)
    write_npm_tarball(tmp_path / "cache", program, {"package/other": b""})

    with pytest.raises(EnvironmentProblem) as caught:
        prepare_context(image, tmp_path / "scratch", cache=tmp_path / "cache")

    assert f"has no {program.member}" in str(caught.value)


def test_unknown_profile_image_rejected() -> None:
    with pytest.raises(InputError) as caught:
        image_for("custom")

    assert "profile 'custom' has no image to build; use one of: aider, claude-code, codex, copilot" in str(caught.value)


def test_context_holds_debs_and_stage_script(tmp_path: Path) -> None:
    image = image_for("claude-code")
    program = image.programs[0]
    assert isinstance(program, NpmProgram)
    write_npm_tarball(tmp_path / "cache", program, {program.member: b"#!/bin/sh\n"})
    deb = tmp_path / "git_1%3a2.39.5-0+deb12u3_amd64.deb"
    deb.write_bytes(b"!<arch>\n")

    context = prepare_context(image, tmp_path / "scratch", cache=tmp_path / "cache", debs=[deb])

    folder = context / "packages" / "debs"
    assert sorted(path.name for path in folder.iterdir()) == [
        "git_1%3a2.39.5-0+deb12u3_amd64.deb", "gitconfig", "stage-debs.sh",
    ]
    assert (folder / deb.name).read_bytes() == b"!<arch>\n"


@pytest.mark.parametrize("profile", ["aider", "claude-code", "codex", "copilot"])
def test_profile_installs_git_in_stage(profile: str) -> None:
    image = image_for(profile)
    dockerfile = (image.recipe.context / "Dockerfile").read_text(encoding="utf-8")

    assert image.debs == ("git",)
    assert "RUN sh /tmp/debs/stage-debs.sh /staging" in dockerfile
    # Only the staged files reach the image's last stage, never the .deb files themselves.
    assert "COPY --from=debs /staging/ /" in dockerfile
    assert dockerfile.count("COPY packages/debs ") == 1
    assert "COPY packages/debs/gitconfig /staging/etc/gitconfig" in dockerfile
    assert "git --version" in dockerfile
