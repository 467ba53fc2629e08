"""Plan building: which host paths may be mounted, and the exact container spec of an accepted plan.

Every plan is built from made-up host facts. The home directory that the
checks protect is a folder in tmp_path, so no test reads the real home.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import EXIT_INVALID_INPUT, PlanError
from orchestrator.manifest import DEFAULT_IMAGE
from orchestrator.plan import HostFacts, RunPlan

from .conftest import RUN_ID, agent, manifest_data

PlanFor = Callable[..., RunPlan]
MakeFacts = Callable[..., HostFacts]


def plan_error(plan_for: PlanFor, data: dict, **options: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan_for(data, **options)
    return caught.value


def resolved(path: Path | str) -> str:
    return os.path.realpath(path)


def messages_of(error: PlanError, field: str) -> list[str]:
    return [problem.message for problem in error.problems if problem.field == field]


def naming(error: PlanError, field: str, path: Path | str) -> list[str]:
    """Return the messages of the problems of `field` that name `path`, as written or resolved."""
    forms = {str(path), resolved(path)}
    whole_token = "|".join(re.escape(form) for form in forms)
    pattern = re.compile(rf"(?<![^\s(])(?:{whole_token})(?=[\s);,]|$)")
    return [message for message in messages_of(error, field) if pattern.search(message)]


def reported(error: PlanError, field: str, path: Path | str, fragment: str) -> bool:
    """Return whether a problem of `field` names `path` and contains `fragment`."""
    return any(fragment in message for message in naming(error, field, path))


def is_below(path: Path, folder: Path) -> bool:
    return folder in path.parents


# Each case: a function of the fake home that returns the source path, and a word of the reason.
SENSITIVE_SOURCES = [
    pytest.param(lambda home: home, "home directory", id="home"),
    pytest.param(lambda home: home.parent, "home directory", id="parent-of-home"),
    pytest.param(lambda home: home / ".ssh", "credential store", id="ssh"),
    pytest.param(lambda home: home / ".aws" / "sub", "credential store", id="aws-subfolder"),
    pytest.param(lambda home: home / ".config" / "gcloud", "credential store", id="gcloud"),
    pytest.param(lambda home: home / ".kube", "credential store", id="kube"),
    pytest.param(lambda home: home / ".docker", "credential store", id="docker-config"),
    pytest.param(lambda home: home / ".gnupg", "credential store", id="gnupg"),
    pytest.param(lambda home: home / ".netrc", "credential store", id="netrc"),
    pytest.param(lambda home: Path("/"), "root of the host's file system", id="root"),
    pytest.param(lambda home: Path("/etc"), "exposes the host", id="etc"),
    pytest.param(lambda home: Path("/proc"), "exposes the host", id="proc"),
    pytest.param(lambda home: Path("/sys"), "exposes the host", id="sys"),
    pytest.param(lambda home: Path("/var/run"), "exposes the host", id="var-run"),
    pytest.param(lambda home: Path("/run"), "exposes the host", id="run"),
    pytest.param(lambda home: Path("/var/run/docker.sock"), "the host", id="docker-socket"),
    pytest.param(lambda home: Path("/var"), "exposes the host", id="var"),
]


@pytest.mark.parametrize(("source_of", "reason"), SENSITIVE_SOURCES)
def test_sensitive_source_rejected(
    plan_for: PlanFor, fake_home: Path, source_of: Callable[[Path], Path], reason: str
) -> None:
    source = source_of(fake_home)
    if is_below(source, fake_home):
        source.mkdir(parents=True, exist_ok=True)

    error = plan_error(plan_for, manifest_data(source))

    assert error.exit_code == EXIT_INVALID_INPUT
    assert reported(error, "source", source, reason), str(error)


def test_project_below_home_accepted(plan_for: PlanFor, fake_home: Path) -> None:
    source = fake_home / "projects" / "app"
    source.mkdir(parents=True)

    plan = plan_for(manifest_data(source))

    assert plan.source == source


def test_symlink_to_credentials_rejected(plan_for: PlanFor, fake_home: Path, tmp_path: Path) -> None:
    (fake_home / ".ssh").mkdir()
    link = tmp_path / "creds"
    link.symlink_to(fake_home / ".ssh")

    error = plan_error(plan_for, manifest_data(link))

    assert reported(error, "source", fake_home / ".ssh", "credential store"), str(error)


def test_source_with_dotenv_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    (source_dir / "config").mkdir()
    (source_dir / "config" / ".env").write_text("API_TOKEN=x\n", encoding="utf-8")

    error = plan_error(plan_for, manifest_data(source_dir))

    assert reported(error, "source", source_dir / "config" / ".env", ".env file"), str(error)


@pytest.mark.parametrize("name", [".env.local", ".envrc"])
def test_source_with_dotenv_variant_rejected(plan_for: PlanFor, source_dir: Path, name: str) -> None:
    (source_dir / name).write_text("API_TOKEN=x\n", encoding="utf-8")

    error = plan_error(plan_for, manifest_data(source_dir))

    assert reported(error, "source", source_dir / name, ".env file"), str(error)


@pytest.mark.parametrize("name", [".env.example", ".env.sample", ".env.template", ".env.dist"])
def test_source_with_dotenv_template_accepted(plan_for: PlanFor, source_dir: Path, name: str) -> None:
    (source_dir / name).write_text("API_TOKEN=\n", encoding="utf-8")

    plan = plan_for(manifest_data(source_dir))

    assert plan.source == source_dir


def test_source_with_unix_socket_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    socket_path = source_dir / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))

    error = plan_error(plan_for, manifest_data(source_dir))

    assert reported(error, "source", socket_path, "Unix socket"), str(error)


def test_sensitive_output_rejected(plan_for: PlanFor, source_dir: Path, fake_home: Path) -> None:
    output = fake_home / ".aws"

    error = plan_error(plan_for, manifest_data(source_dir, output=str(output)))

    assert reported(error, "output", output, "credential store"), str(error)


def test_sensitive_workspace_rejected(plan_for: PlanFor, source_dir: Path, fake_home: Path) -> None:
    workspace = fake_home / ".kube"
    data = manifest_data(source_dir, agents=[agent("reader", workspace=str(workspace))])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", workspace, "credential store"), str(error)


def test_shared_workspace_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", workspace="ws"), agent("writer", workspace="ws")])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "ws", "also the workspace of agent writer"), str(error)


def test_nested_workspaces_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", workspace="ws"), agent("writer", workspace="ws/inner")])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "ws", "are nested"), str(error)


def test_custom_and_default_workspace_nested_rejected(plan_for: PlanFor, source_dir: Path, runs_root: Path) -> None:
    # A custom workspace that contains the run folder contains the default workspace of every other agent.
    data = manifest_data(source_dir, agents=[agent("reader", workspace=str(runs_root)), agent("writer")])

    error = plan_error(plan_for, data)

    nested = f"{runs_root / RUN_ID / 'agents' / 'writer'}) are nested"
    assert reported(error, "agents[0].workspace", runs_root, nested), str(error)


def test_workspace_containing_source_rejected(plan_for: PlanFor, tmp_path: Path) -> None:
    source = tmp_path / "outer" / "src"
    source.mkdir(parents=True)
    data = manifest_data(
        source, output=str(tmp_path / "generated"), agents=[agent("reader", workspace=str(tmp_path / "outer"))]
    )

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "outer", f"contains the source {source}"), str(error)


def test_workspace_equal_to_output_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    data = manifest_data(source_dir, output="generated", agents=[agent("reader", workspace="generated")])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "generated", "overlaps the output tree"), str(error)


def test_non_empty_workspace_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "old.txt").write_text("left over\n", encoding="utf-8")
    data = manifest_data(source_dir, agents=[agent("reader", workspace="ws")])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "ws", "already exists"), str(error)


def test_existing_empty_workspace_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    # An existing folder could be a system folder or another run's workspace; the run makes its own.
    (tmp_path / "ws").mkdir()
    data = manifest_data(source_dir, agents=[agent("reader", workspace="ws")])

    error = plan_error(plan_for, data)

    assert reported(error, "agents[0].workspace", tmp_path / "ws", "already exists"), str(error)


def test_absent_custom_workspace_accepted(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", workspace="ws")])

    plan = plan_for(data)

    assert plan.agents[0].workspace == tmp_path / "ws"


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("/usr/local/sbin/agent", "where written files can run on the host"),
        ("/var/tmp/agent", "where written files can run on the host"),
        ("project/.git/hooks2", "inside a .git folder"),
    ],
)
def test_workspace_in_code_location_rejected(
    plan_for: PlanFor, source_dir: Path, tmp_path: Path, written: str, reason: str
) -> None:
    target = written if written.startswith("/") else str(tmp_path / written)
    data = manifest_data(source_dir, agents=[agent("reader", workspace=target)])

    error = plan_error(plan_for, data)

    assert "agents[0].workspace" in str(error)
    assert reason in str(error)


def test_source_containing_credential_store_rejected(plan_for: PlanFor, fake_home: Path) -> None:
    config = fake_home / ".config"
    (config / "gh").mkdir(parents=True)
    (config / "github-copilot").mkdir()

    error = plan_error(plan_for, manifest_data(config))

    assert "contains the credential store" in str(error)


@pytest.mark.parametrize("place", ["runs-inside-workspace", "workspace-is-run-folder"])
def test_workspace_holding_run_folder_rejected(plan_for: PlanFor, source_dir: Path, tmp_path: Path, place: str) -> None:
    if place == "runs-inside-workspace":
        workspace, runs = tmp_path / "ws", tmp_path / "ws" / "runs"
    else:
        workspace, runs = tmp_path / "runs" / RUN_ID, tmp_path / "runs"
    data = manifest_data(source_dir, agents=[agent("reader", workspace=str(workspace))])

    error = plan_error(plan_for, data, runs=runs)

    assert "agents[0].workspace" in str(error)


def test_missing_source_rejected(plan_for: PlanFor, tmp_path: Path) -> None:
    error = plan_error(plan_for, manifest_data(tmp_path / "absent"))

    assert reported(error, "source", tmp_path / "absent", "does not exist"), str(error)


def test_file_as_source_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    error = plan_error(plan_for, manifest_data(source_dir / "app.py"))

    assert reported(error, "source", source_dir / "app.py", "is not a folder"), str(error)


def test_missing_default_image_rejected(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    facts = make_facts(images={DEFAULT_IMAGE: None})

    error = plan_error(plan_for, manifest_data(source_dir), facts=facts)

    messages = messages_of(error, "defaults.image")
    assert len(messages) == 1, str(error)
    assert f"image {DEFAULT_IMAGE} is not on this machine" in messages[0]
    assert "`orchestrate images build`" in messages[0]


def test_missing_agent_image_rejected(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    facts = make_facts(images={DEFAULT_IMAGE: "sha256:1", "tools:1": None})
    data = manifest_data(source_dir, agents=[agent("reader"), agent("writer", image="tools:1")])

    error = plan_error(plan_for, data, facts=facts)

    assert [message.split(";")[0] for message in messages_of(error, "agents[1].image")] == [
        "image tools:1 is not on this machine"
    ]
    assert messages_of(error, "defaults.image") == []


def test_cpus_above_host_rejected(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", resources={"cpus": 3})])

    error = plan_error(plan_for, data, facts=make_facts(cpu_count=2))

    assert [message.split(";")[0] for message in messages_of(error, "agents[0].resources.cpus")] == [
        "asks for 3.0 CPUs but this machine has 2"
    ]


def test_cpus_equal_to_host_accepted(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", resources={"cpus": 2})])

    plan = plan_for(data, facts=make_facts(cpu_count=2))

    assert plan.agents[0].container.limits.cpus == 2.0


def test_unset_agent_variable_rejected(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    data = manifest_data(source_dir, agents=[agent("reader", env=["API_TOKEN"])])

    error = plan_error(plan_for, data, facts=make_facts(environment={"OTHER": "1"}))

    assert any("API_TOKEN is not set" in message for message in messages_of(error, "agents[0].env"))


def test_unset_default_variable_rejected(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    data = manifest_data(source_dir, defaults={"env": ["SHARED_TOKEN"]})

    error = plan_error(plan_for, data, facts=make_facts(environment={}))

    assert any("SHARED_TOKEN is not set" in message for message in messages_of(error, "defaults.env"))


def test_every_plan_problem_reported(plan_for: PlanFor, tmp_path: Path, make_facts: MakeFacts) -> None:
    data = manifest_data(tmp_path / "absent", agents=[agent("reader", env=["API_TOKEN"], resources={"cpus": 8})])

    error = plan_error(plan_for, data, facts=make_facts(images={DEFAULT_IMAGE: None}))

    messages = [problem.message for problem in error.problems]
    assert len(messages) == 4, messages


@pytest.mark.parametrize("relative", ["runs", "var/runs"])
def test_runs_inside_source_masked(plan_for: PlanFor, source_dir: Path, relative: str) -> None:
    plan = plan_for(manifest_data(source_dir), runs=source_dir / relative)

    mounts = plan.agents[0].container.mounts
    masks = [mount for mount in mounts if mount.target == f"/workspace/src/{relative}"]
    assert len(masks) == 1
    assert masks[0].type == "tmpfs"
    assert masks[0].read_only is True


def test_runs_mask_follows_source_mount(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir), runs=source_dir / "runs")

    targets = [mount.target for mount in plan.agents[0].container.mounts]
    assert targets.index("/workspace/src/runs") > targets.index("/workspace/src")


def test_runs_outside_source_not_masked(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir))

    targets = [mount.target for mount in plan.agents[0].container.mounts]
    assert not any(target.startswith("/workspace/src/") for target in targets)


def test_source_inside_runs_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    error = plan_error(plan_for, manifest_data(source_dir), runs=source_dir.parent)

    assert reported(error, "source", source_dir, f"lies inside the runs folder {source_dir.parent}"), str(error)


@pytest.fixture
def secret_plan(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> RunPlan:
    facts = make_facts(
        environment={
            "API_TOKEN": "listed-secret-5f2a9c",
            "SHARED_TOKEN": "default-secret-8d41e0",
            "UNLISTED_TOKEN": "unlisted-secret-b7730f",
        }
    )
    data = manifest_data(source_dir, defaults={"env": ["SHARED_TOKEN"]}, agents=[agent("reader", env=["API_TOKEN"])])
    return plan_for(data, facts=facts)


def test_container_has_no_network(secret_plan: RunPlan) -> None:
    assert secret_plan.agents[0].container.security.network_mode == "none"


def test_container_drops_all_capabilities(secret_plan: RunPlan) -> None:
    security = secret_plan.agents[0].container.security

    assert security.cap_drop == ("ALL",)
    assert security.cap_add == ()


def test_container_is_locked_down(secret_plan: RunPlan) -> None:
    security = secret_plan.agents[0].container.security

    assert security.no_new_privileges is True
    assert security.read_only_rootfs is True
    assert security.privileged is False


def test_container_user_from_facts(secret_plan: RunPlan) -> None:
    assert secret_plan.agents[0].container.user == "1234:5678"


def test_root_runs_agent_as_1000(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    plan = plan_for(manifest_data(source_dir), facts=make_facts(uid=0, gid=0))

    assert plan.agents[0].container.user == "1000:1000"


def test_userns_offset_shifts_workspace_owner(plan_for: PlanFor, source_dir: Path, make_facts: MakeFacts) -> None:
    plan = plan_for(manifest_data(source_dir), facts=make_facts(uid=0, gid=0, userns_offset=100000))

    assert (plan.agents[0].host_uid, plan.agents[0].host_gid) == (101000, 101000)


def test_container_mounts_exact(secret_plan: RunPlan, source_dir: Path, runs_root: Path) -> None:
    mounts = [
        (mount.type, mount.source, mount.target, mount.read_only, mount.size)
        for mount in secret_plan.agents[0].container.mounts
    ]

    assert mounts == [
        ("bind", str(source_dir), "/workspace/src", True, None),
        ("bind", str(runs_root / RUN_ID / "agents" / "reader"), "/workspace/output", False, None),
        ("bind", str(secret_plan.output), "/workspace/shared", True, None),
        ("tmpfs", None, "/workspace/shared/.orchestrate", True, 4096),
        ("tmpfs", None, "/tmp", False, 256 * 1024**2),
        ("tmpfs", None, "/home/agent", False, 64 * 1024**2),
    ]


def test_container_labels_name_run_and_agent(secret_plan: RunPlan) -> None:
    labels = secret_plan.agents[0].container.labels

    assert labels["orchestrate.run"] == RUN_ID
    assert labels["orchestrate.agent"] == "reader"


def test_container_env_names_only_listed(secret_plan: RunPlan) -> None:
    assert secret_plan.agents[0].container.env_names == ("SHARED_TOKEN", "API_TOKEN")


@pytest.mark.parametrize("value", ["listed-secret-5f2a9c", "default-secret-8d41e0", "unlisted-secret-b7730f"])
def test_plan_dump_holds_no_secret(secret_plan: RunPlan, value: str) -> None:
    assert value not in secret_plan.model_dump_json()


def test_container_limits_merge_defaults(plan_for: PlanFor, source_dir: Path) -> None:
    data = manifest_data(
        source_dir,
        defaults={"resources": {"memory": "512m", "pids": 64}},
        agents=[agent("reader", resources={"pids": 32})],
    )

    limits = plan_for(data).agents[0].container.limits

    assert limits.memory == 512 * 1024**2
    assert limits.pids == 32
    assert limits.cpus == 1.0


def test_plan_logs_in_run_folder(secret_plan: RunPlan, runs_root: Path) -> None:
    assert secret_plan.agents[0].log_path == runs_root / RUN_ID / "agents" / "reader.log"
