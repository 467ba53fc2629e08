"""`orchestrate doctor`'s judgement of made-up machine facts: statuses, fixes and the exit code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from orchestrator.doctor import (
    Check,
    DoctorFacts,
    count_inotify_watches,
    report_text,
    run_checks,
    runs_dir_problem,
)

HEALTHY_INFO = {
    "Driver": "overlay2",
    "CgroupVersion": "1",
    "CgroupDriver": "cgroupfs",
    "Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]},
                 "runsc-network": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}},
    "SecurityOptions": ["name=seccomp,profile=default"],
}
HEALTHY = DoctorFacts(
    server_version="20.10.24",
    api_version="1.41",
    info=HEALTHY_INFO,
    base_image_present=True,
    inotify_max_watches=524_288,
    inotify_watches_in_use=12,
    free_bytes=50 * 1024**3,
    seccomp_sha256="ab" * 32,
)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_healthy_machine_passes() -> None:
    report = run_checks(HEALTHY)

    assert report.exit_code == 0
    assert {check.status for check in report.checks} == {"ok"}


def test_unreachable_docker_fails() -> None:
    report = run_checks(DoctorFacts(docker_error="connection refused", inotify_max_watches=524_288,
                                    free_bytes=50 * 1024**3))

    checks = by_name(report.checks)
    assert report.exit_code == 1
    assert checks["docker"].status == "fail"
    assert "systemctl start docker" in (checks["docker"].fix or "")
    # Checks that need the engine are left out rather than guessed.
    assert "base image" not in checks


def test_missing_base_image_fails() -> None:
    report = run_checks(replace(HEALTHY, base_image_present=False))

    image = by_name(report.checks)["base image"]
    assert report.exit_code == 1
    assert image.status == "fail"
    assert image.fix == "orchestrate images build"


def test_missing_runsc_warns_with_setup() -> None:
    info = {**HEALTHY_INFO, "Runtimes": {"runc": {"path": "runc"}}}

    report = run_checks(replace(HEALTHY, info=info))

    runsc = by_name(report.checks)["runtime runsc"]
    assert report.exit_code == 0
    assert runsc.status == "warn"
    assert "apt-get install runsc" in (runsc.fix or "")


def test_missing_runsc_network_warns_with_setup() -> None:
    info = {**HEALTHY_INFO, "Runtimes": {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc"}}}

    report = run_checks(replace(HEALTHY, info=info))

    network = by_name(report.checks)["runtime runsc-network"]
    assert report.exit_code == 0
    assert network.status == "warn"
    assert "--network=host" in (network.fix or "")


def test_broken_seccomp_profile_fails() -> None:
    report = run_checks(replace(HEALTHY, seccomp_error="not valid JSON", seccomp_sha256=None))

    assert report.exit_code == 1
    assert "generate.py" in (by_name(report.checks)["seccomp profile"].fix or "")


def test_low_inotify_limit_warns() -> None:
    report = run_checks(replace(HEALTHY, inotify_max_watches=8192))

    inotify = by_name(report.checks)["inotify watches"]
    assert inotify.status == "warn"
    assert "sysctl fs.inotify.max_user_watches=" in (inotify.fix or "")


def test_low_disk_warns() -> None:
    report = run_checks(replace(HEALTHY, free_bytes=100 * 1024**2))

    assert by_name(report.checks)["free disk"].status == "warn"


def test_vfs_storage_warns() -> None:
    report = run_checks(replace(HEALTHY, info={**HEALTHY_INFO, "Driver": "vfs"}))

    assert by_name(report.checks)["storage driver"].status == "warn"


def test_rootless_engine_fails() -> None:
    info = {**HEALTHY_INFO, "SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]}

    assert by_name(run_checks(replace(HEALTHY, info=info)).checks)["userns-remap"].status == "fail"


def test_userns_remap_reported_on() -> None:
    info = {**HEALTHY_INFO, "SecurityOptions": ["name=userns"]}

    assert "on" in by_name(run_checks(replace(HEALTHY, info=info)).checks)["userns-remap"].detail


def test_text_shows_fix_of_problem_only() -> None:
    text = report_text(run_checks(replace(HEALTHY, base_image_present=False)))

    assert "fix: orchestrate images build" in text
    assert text.count("fix:") == 1


def test_json_lists_every_check() -> None:
    document = run_checks(HEALTHY).to_json()

    assert document["ok"] is True
    assert {"name", "status", "detail", "fix"} <= set(document["checks"][0])


def test_inotify_count_reads_fdinfo(tmp_path: Path) -> None:
    fdinfo = tmp_path / "4242" / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "3").write_text("pos:\t0\ninotify wd:1 ino:2\ninotify wd:2 ino:3\n", encoding="utf-8")
    (fdinfo / "4").write_text("pos:\t0\nflags:\t02\n", encoding="utf-8")

    assert count_inotify_watches((tmp_path / "4242").stat().st_uid, proc=tmp_path) == 2


def test_runs_folder_file_fails(tmp_path: Path) -> None:
    # `run` rejects a runs folder that is a file, so doctor must fail it too.
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder\n")
    assert runs_dir_problem(a_file) == "is a file, not a folder"
    assert runs_dir_problem(tmp_path / "new" / "runs") is None
    report = run_checks(DoctorFacts(docker_error="unreachable", runs_dir=a_file,
                                    runs_dir_problem=runs_dir_problem(a_file)))
    check = next(item for item in report.checks if item.name == "runs folder")
    assert check.status == "fail"
    assert report.exit_code == 1
