"""Resolving and fetching Debian packages for offline image builds, with a fake apt-get on PATH."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from orchestrator import debian_packages
from orchestrator.debian_packages import DebPackage, check_same_release, parse_simulated_installs
from orchestrator.errors import EnvironmentProblem

SIMULATED = """\
Reading package lists...
The following NEW packages will be installed:
  git git-man libcurl3-gnutls
Inst libcurl3-gnutls (7.88.1-10+deb12u15 Debian:12.15/oldstable [amd64])
Inst libc6 [2.36-9+deb12u9] (2.36-9+deb12u13 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64])
Inst git-man (1:2.39.5-0+deb12u3 Debian:12.15/oldstable [all])
Inst git (1:2.39.5-0+deb12u3 Debian:12.15/oldstable [amd64])
Conf libcurl3-gnutls (7.88.1-10+deb12u15 Debian:12.15/oldstable [amd64])
Conf git (1:2.39.5-0+deb12u3 Debian:12.15/oldstable [amd64])
"""


def fake_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, simulate: str = "", writes: bool = True) -> Path:
    """Put an apt-get on PATH that logs its arguments, prints `simulate` and, for `download`, writes the files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (tmp_path / "simulated").write_text(simulate, encoding="utf-8")
    download = """
        for spec in "$@"; do
            case "$spec" in
                *=*) name=${spec%%=*}; version=$(echo "${spec#*=}" | sed 's/:/%3a/')
                     : > "${name}_${version}_amd64.deb";;
            esac
        done""" if writes else ""
    script = bin_dir / "apt-get"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {shlex.quote(str(calls))}
case " $* " in
    *" --simulate "*) cat {shlex.quote(str(tmp_path / "simulated"))};;
    *" download "*) {download or ":"};;
esac
""", encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return calls


def test_simulated_installs_parsed_in_order() -> None:
    packages = parse_simulated_installs(SIMULATED)

    assert [package.name for package in packages] == ["libcurl3-gnutls", "libc6", "git-man", "git"]
    assert packages[0] == DebPackage("libcurl3-gnutls", "7.88.1-10+deb12u15", "amd64")
    assert packages[1].upgrade_of == "2.36-9+deb12u9"
    assert packages[2].arch == "all"


def test_simulated_installs_empty_when_installed() -> None:
    assert parse_simulated_installs("git is already the newest version (1:2.39.5-0+deb12u3).\n") == []


def test_deb_filename_encodes_epoch() -> None:
    package = DebPackage("git", "1:2.39.5-0+deb12u3", "amd64")

    assert package.filename == "git_1%3a2.39.5-0+deb12u3_amd64.deb"
    assert package.spec == "git=1:2.39.5-0+deb12u3"


def test_resolve_reads_base_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_apt_get(tmp_path, monkeypatch, simulate=SIMULATED)
    status = tmp_path / "base-dpkg-status"

    packages = debian_packages.resolve(["git"], base_status=status)

    assert len(packages) == 4
    command = calls.read_text(encoding="utf-8")
    assert f"Dir::State::status={status}" in command
    assert "--no-install-recommends" in command


def test_download_skips_cached_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_apt_get(tmp_path, monkeypatch)
    cache = tmp_path / "deb"
    cache.mkdir()
    cached, absent = DebPackage("git-man", "1:2.39.5-0+deb12u3", "amd64"), DebPackage("git", "1:2.39.5", "amd64")
    (cache / cached.filename).write_bytes(b"cached")

    files = debian_packages.download([cached, absent], cache)

    assert files == [cache / cached.filename, cache / absent.filename]
    assert calls.read_text(encoding="utf-8").split() == ["download", "--quiet", "git=1:2.39.5"]
    assert (cache / cached.filename).read_bytes() == b"cached"


def test_download_reports_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt_get(tmp_path, monkeypatch, writes=False)

    with pytest.raises(EnvironmentProblem) as caught:
        debian_packages.download([DebPackage("git", "1:2.39.5", "amd64")], tmp_path / "deb")

    assert "apt-get download wrote no git_1%3a2.39.5_amd64.deb" in str(caught.value)


def test_apt_failure_names_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package git' >&2\nexit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    with pytest.raises(EnvironmentProblem) as caught:
        debian_packages.resolve(["git"], base_status=tmp_path / "status")

    assert "failed with exit code 100" in str(caught.value)
    assert "E: Unable to locate package git" in str(caught.value)


def test_other_release_refused() -> None:
    check_same_release(host="bookworm", base="bookworm")

    with pytest.raises(EnvironmentProblem) as caught:
        check_same_release(host="trixie", base="bookworm")

    assert "the host runs Debian 'trixie' but the base image is Debian 'bookworm'" in str(caught.value)
