"""Manifest loading: every bad manifest must exit 2 with a located, actionable message.

Bad manifests go through `orchestrate plan` in-process. The tests replace the
runtime with a stand-in that fails the test when the command requests host
facts, because a manifest error must stop the command before it contacts Docker.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator import cli
from orchestrator.errors import EXIT_INVALID_INPUT, DockerUnavailable, ManifestError
from orchestrator.manifest import LoadedManifest, load_manifest
from orchestrator.plan import RunPlan
from orchestrator.units import format_duration, format_size, parse_duration, parse_size
from tests.unit.conftest import ManifestData, manifest_data

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "agents.example.yaml"
# A line that ends with this comment is the line the expected message must name.
MARK = "#<"

VALID = """\
version: 1
name: demo
source: ./src
agents:
  - name: reader
    command: [python3, app.py]
"""


class UnusedRuntime:
    """A stand-in for Docker whose methods fail the test, because a manifest error must come first."""

    def host_facts(self, images: list[str], environment: dict[str, str]) -> object:
        raise AssertionError("the manifest was accepted and the command asked for host facts")


@pytest.fixture(autouse=True)
def restore_cli_logging() -> Iterator[None]:
    """Put back the package logger that the CLI callback points at the runner's captured stderr."""
    logger = logging.getLogger("orchestrator")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def run_plan(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(cli, "_runtime", UnusedRuntime)

    def invoke(path: Path) -> Result:
        return CliRunner().invoke(cli.app, ["plan", str(path)])

    return invoke


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def marked_line(text: str) -> int:
    lines = textwrap.dedent(text).splitlines()
    marked = [number for number, line in enumerate(lines, start=1) if line.rstrip().endswith(MARK)]
    assert len(marked) == 1, "a case must mark exactly one line"
    return marked[0]


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return [str(problem) for problem in caught.value.problems]


# Each case: a manifest with one marked line, and what must follow "FILE:LINE: " in the error.
BAD_MANIFESTS = [
    pytest.param(
        VALID + "descripton: nightly reports  #<\n",
        "descripton: unknown field 'descripton'; did you mean 'description'?",
        id="unknown-top-level-key",
    ),
    pytest.param(
        VALID + "    timout: 5m  #<\n",
        "agents[0].timout: unknown field 'timout'; did you mean 'timeout'?",
        id="unknown-agent-key-close-to-a-field",
    ),
    pytest.param(
        VALID + "    colour: blue  #<\n",
        "agents[0].colour: unknown field 'colour'; remove it",
        id="unknown-agent-key-without-suggestion",
    ),
    pytest.param(
        VALID + "    resources:\n      cpu: 2  #<\n",
        "agents[0].resources.cpu: unknown field 'cpu'; did you mean 'cpus'?",
        id="unknown-resource-key",
    ),
    pytest.param(
        """\
        name: demo  #<
        source: ./src
        agents:
          - name: reader
            command: [python3, app.py]
        """,
        "version: missing required field",
        id="missing-version",
    ),
    pytest.param(
        VALID.replace("version: 1", "version: 2  #<"),
        "version: invalid value 2; use 1",
        id="version-2",
    ),
    pytest.param(
        """\
        version: 1  #<
        name: demo
        source: ./src
        """,
        "agents: missing required field",
        id="missing-agents",
    ),
    pytest.param(
        """\
        version: 1
        name: demo
        source: ./src
        agents: []  #<
        """,
        "agents: must not be empty",
        id="empty-agents",
    ),
    pytest.param(
        VALID.replace("name: reader", "name: Reader  #<"),
        "agents[0].name: invalid agent name 'Reader'",
        id="agent-name-uppercase",
    ),
    pytest.param(
        VALID.replace("name: reader", "name: code_reader  #<"),
        "agents[0].name: invalid agent name 'code_reader'",
        id="agent-name-underscore",
    ),
    pytest.param(
        VALID.replace("name: reader", f"name: {'a' * 64}  #<"),
        f"agents[0].name: invalid agent name '{'a' * 64}'",
        id="agent-name-64-characters",
    ),
    pytest.param(
        VALID + "  - name: reader  #<\n    command: [python3, app.py]\n",
        "agents[1].name: duplicate agent name 'reader' (also agents[0])",
        id="duplicate-agent-name",
    ),
    pytest.param(
        VALID.replace("name: demo", "name: Nightly  #<"),
        "name: invalid manifest name 'Nightly'",
        id="manifest-name-uppercase",
    ),
    pytest.param(
        VALID + "  - name: writer\n    command: [python3, app.py]\n" + "    resources:\n      memory: 4 gigs  #<\n",
        "agents[1].resources.memory: invalid size '4 gigs'",
        id="bad-size",
    ),
    pytest.param(
        VALID + "    timeout: 5 minutes  #<\n",
        "agents[0].timeout: invalid duration '5 minutes'",
        id="bad-duration",
    ),
    pytest.param(
        VALID + "defaults:\n  timeout: 0s  #<\n",
        "defaults.timeout: invalid duration '0s'",
        id="zero-duration",
    ),
    pytest.param(
        VALID + "    resources:\n      cpus: 0  #<\n",
        "agents[0].resources.cpus: invalid value 0; use a number at least 0.01",
        id="zero-cpus",
    ),
    pytest.param(
        VALID + "    resources:\n      cpus: -1.5  #<\n",
        "agents[0].resources.cpus: invalid value -1.5; use a number at least 0.01",
        id="negative-cpus",
    ),
    pytest.param(
        VALID + "defaults:\n  resources:\n    cpus: 2000  #<\n",
        "defaults.resources.cpus: invalid value 2000; use a number at most 1024",
        id="cpus-above-1024",
    ),
    pytest.param(
        VALID + "    resources:\n      pids: 4  #<\n",
        "agents[0].resources.pids: invalid value 4; use a number at least 8",
        id="pids-too-low",
    ),
    pytest.param(
        VALID + "    resources:\n      memory: 5m  #<\n",
        "agents[0].resources.memory: memory limit 5242880 bytes is below Docker's minimum",
        id="agent-memory-below-6m",
    ),
    pytest.param(
        VALID + "defaults:\n  resources:\n    memory: 1m  #<\n",
        "defaults.resources.memory: memory limit 1048576 bytes is below Docker's minimum",
        id="default-memory-below-6m",
    ),
    pytest.param(
        VALID.replace("command: [python3, app.py]", "command: []  #<"),
        "agents[0].command: must not be empty",
        id="command-empty-list",
    ),
    pytest.param(
        VALID.replace("command: [python3, app.py]", "command: ['']  #<"),
        "agents[0].command: command is empty",
        id="command-empty-word",
    ),
    pytest.param(
        VALID.replace("command: [python3, app.py]", "command: python3 -c 'print(1)  #<"),
        "agents[0].command: invalid command 'python3 -c 'print(1)'",
        id="command-unbalanced-quote",
    ),
    pytest.param(
        VALID + "    env: [API_TOKEN, DOCKER_HOST]  #<\n",
        "agents[0].env[1]: variable DOCKER_HOST ",
        id="env-docker-host",
    ),
    pytest.param(
        VALID + "defaults:\n  env: [docker_config]  #<\n",
        "defaults.env[0]: variable docker_config ",
        id="env-docker-lowercase",
    ),
    pytest.param(
        VALID + "    env: [1TOKEN]  #<\n",
        "agents[0].env[0]: invalid variable name '1TOKEN'",
        id="env-name-starts-with-digit",
    ),
    pytest.param(
        VALID + "    env: [MY-TOKEN]  #<\n",
        "agents[0].env[0]: invalid variable name 'MY-TOKEN'",
        id="env-name-with-dash",
    ),
    pytest.param(
        VALID + "    writes: [docs/**, ../secrets/**]  #<\n",
        "agents[0].writes[1]: invalid glob '../secrets/**'",
        id="glob-with-dotdot",
    ),
    pytest.param(
        VALID + "    writes: [/etc/**]  #<\n",
        "agents[0].writes[0]: invalid glob '/etc/**'",
        id="glob-absolute",
    ),
    pytest.param(
        VALID + "    writes: ['docs/a**']  #<\n",
        "agents[0].writes[0]: invalid glob 'docs/a**'",
        id="glob-double-star-inside-segment",
    ),
    pytest.param(
        VALID + "    workdir: output  #<\n",
        "agents[0].workdir: invalid workdir 'output'",
        id="relative-workdir",
    ),
    pytest.param(
        VALID + "    profile: claude  #<\n",
        "agents[0].profile: unknown profile 'claude'; use one of: aider, claude-code, codex, copilot, custom",
        id="unknown-profile",
    ),
    pytest.param(
        VALID.replace("source: ./src", "source: ''  #<"),
        "source.path: must not be empty",
        id="empty-source",
    ),
    pytest.param(
        VALID + "shared:\n  - path: CHANGELOG.md\n    mode: apend  #<\n",
        "shared[0].mode: invalid value 'apend'; use 'exclusive' or 'append'",
        id="shared-mode-typo",
    ),
    pytest.param(
        VALID + "shared:\n  - path: docs/**\n  - path: docs/**  #<\n",
        "shared[1].path: duplicate shared path 'docs/**'",
        id="duplicate-shared-path",
    ),
    pytest.param(
        VALID.replace("name: demo", "name: demo: nightly  #<"),
        "invalid YAML: mapping values are not allowed here",
        id="yaml-syntax-error",
    ),
    pytest.param(
        VALID.replace("name: demo", "name: demo\n\tdescription: x  #<"),
        "invalid YAML: found character '\\t' that cannot start any token",
        id="yaml-tab-indent",
    ),
    pytest.param(
        VALID + "name: again  #<\n",
        "duplicate key 'name'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "limits: &limits {cpus: 1}\n" + VALID + "    resources:\n      <<: *limits  #<\n",
        "merge keys (<<) are not supported",
        id="merge-key",
    ),
    pytest.param(
        VALID + "1: one  #<\n",
        "key '1' is not a string",
        id="integer-key",
    ),
    pytest.param(
        VALID + "    resources:\n      true: 2  #<\n",
        "key 'true' is not a string",
        id="boolean-key",
    ),
    pytest.param(
        VALID.replace("source: ./src", "source: {path: ~no-such-user-here/src, mode: copy}  #<"),
        "source.path: invalid path '~no-such-user-here/src': no user 'no-such-user-here' on this host",
        id="home-of-unknown-user",
    ),
    pytest.param(
        "- reader  #<\n- writer\n",
        "the top level must be a mapping of fields, not list",
        id="top-level-list",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_MANIFESTS)
def test_bad_manifest_exits_2(tmp_path: Path, run_plan, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    result = run_plan(path)

    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert f"{path}:{marked_line(text)}: {expected}" in result.stderr


@pytest.mark.parametrize(("text", "expected"), BAD_MANIFESTS)
def test_bad_manifest_raises_located_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    problems = load_problems(path)

    assert any(problem.startswith(f"{path}:{marked_line(text)}: {expected}") for problem in problems), problems


def test_bad_manifest_prints_nothing_on_stdout(tmp_path: Path, run_plan) -> None:
    path = write(tmp_path, VALID.replace("version: 1", "version: 2"))

    result = run_plan(path)

    assert result.stdout == ""
    assert result.stderr.startswith(f"orchestrate: error: {path}:1: ")


def test_empty_file_is_rejected(tmp_path: Path, run_plan) -> None:
    path = write(tmp_path, "")

    result = run_plan(path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}: file is empty" in result.stderr


def test_comments_only_file_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing but a comment\n")

    problems = load_problems(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: file is empty")


def test_missing_file_is_rejected(tmp_path: Path, run_plan) -> None:
    path = tmp_path / "absent.yaml"

    result = run_plan(path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}: file not found" in result.stderr


def test_folder_is_not_a_manifest(tmp_path: Path) -> None:
    problems = load_problems(tmp_path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path}: is a folder")


def test_non_utf8_file_names_byte(tmp_path: Path, run_plan) -> None:
    path = tmp_path / "agents.yaml"
    path.write_bytes(b"version: 1\nname: \xff\xfe\n")

    result = run_plan(path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}: not UTF-8 text (byte 17)" in result.stderr


def test_second_document_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "---\nversion: 1\n")

    problems = load_problems(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:7: the file contains more than one YAML document")


def test_alias_bomb_fails_fast(tmp_path: Path, run_plan) -> None:
    # Nine levels of ten aliases each would expand to 10**9 strings.
    lines = ["version: 1", "name: demo", "source: ./src", "a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n")

    started = time.monotonic()
    result = run_plan(path)
    elapsed = time.monotonic() - started

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "document expands to more than 100000 values (aliases?)" in result.stderr
    assert f"{path}:4: " in result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_plain_anchor_and_alias_load(tmp_path: Path) -> None:
    text = VALID + "  - name: writer\n    command: &cmd [python3, app.py]\n  - name: checker\n    command: *cmd\n"

    loaded = load_manifest(write(tmp_path, text))

    assert loaded.manifest.agents[2].command == ["python3", "app.py"]


def test_unknown_yaml_tag_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "    description: !!python/object:os.system x\n")

    problems = load_problems(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:7: invalid value: unsupported tag '!!python/object:os.system'")


def test_unknown_yaml_tag_reports_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "    description: !!python/object:os.system x\n")

    problems = load_problems(path)

    assert "\n" not in problems[0]


def test_file_over_one_mebibyte_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "# " + "x" * (1024 * 1024) + "\n")

    problems = load_problems(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: file is larger than 1048576 bytes")


def test_several_mistakes_each_reported(tmp_path: Path, run_plan) -> None:
    text = """\
    version: 1
    name: demo
    source: ./src
    colour: blue
    agents:
      - name: reader
        command: [python3, app.py]
        timeout: soon
        env: [DOCKER_HOST]
        resources:
          memory: 4 gigs
    """
    path = write(tmp_path, text)

    result = run_plan(path)
    lines = result.stderr.removeprefix("orchestrate: error: ").splitlines()

    assert result.exit_code == EXIT_INVALID_INPUT
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"{path}:4: colour: unknown field 'colour'")
    assert lines[1].startswith(f"{path}:8: agents[0].timeout: invalid duration 'soon'")
    assert lines[2].startswith(f"{path}:9: agents[0].env[0]: variable DOCKER_HOST ")
    assert lines[3].startswith(f"{path}:11: agents[0].resources.memory: invalid size '4 gigs'")


def test_duplicate_name_reported_with_field_error(tmp_path: Path) -> None:
    text = VALID + "  - name: reader\n    command: [python3, app.py]\n    timeout: soon\n"
    path = write(tmp_path, text)

    problems = load_problems(path)

    assert any("agents[1].timeout: invalid duration 'soon'" in problem for problem in problems)
    assert any("agents[1].name: duplicate agent name 'reader'" in problem for problem in problems)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_timeout_not_a_finite_number_rejected(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, VALID + f"    timeout: {value}\n")

    problems = load_problems(path)

    assert any("agents[0].timeout: invalid duration" in problem for problem in problems)


def test_bad_manifest_exits_2_without_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_docker() -> object:
        raise DockerUnavailable("connect: cannot reach the Docker engine")

    monkeypatch.setattr(cli, "_runtime", no_docker)
    path = write(tmp_path, VALID.replace("version: 1", "version: 2"))

    result = CliRunner().invoke(cli.app, ["plan", str(path)])

    assert result.exit_code == EXIT_INVALID_INPUT
    assert f"{path}:1: version: invalid value 2" in result.stderr


def test_example_manifest_loads() -> None:
    loaded = load_manifest(EXAMPLE)

    assert loaded.manifest.name == "example"
    assert [agent.name for agent in loaded.manifest.agents] == ["api-reference", "test-gaps", "static-check"]
    assert loaded.manifest.defaults.resources.memory == 256 * 1024**2
    assert loaded.manifest.defaults.timeout == 120.0
    assert loaded.base_dir == EXAMPLE.parent


def test_example_manifest_records_field_lines() -> None:
    loaded = load_manifest(EXAMPLE)

    assert loaded.line_of("version") == 3
    assert loaded.line_of("agents", 1, "name") == 26


def test_string_command_is_split_into_words(tmp_path: Path) -> None:
    text = VALID.replace("[python3, app.py]", "python3 -c 'print(1)'")

    loaded = load_manifest(write(tmp_path, text))

    assert loaded.manifest.agents[0].command == ["python3", "-c", "print(1)"]


def test_source_as_text_becomes_read_only_mapping(tmp_path: Path) -> None:
    loaded = load_manifest(write(tmp_path, VALID))

    assert loaded.manifest.source.path == "./src"
    assert loaded.manifest.source.mode == "read-only"


def test_schema_lists_agents() -> None:
    result = CliRunner().invoke(cli.app, ["schema"])

    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert "agents" in document["properties"]
    assert "agents" in document["required"]


KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512m", 512 * MiB),
        ("4g", 4 * GiB),
        ("4G", 4 * GiB),
        ("1k", KiB),
        ("2t", 2 * TiB),
        ("1.5g", 1536 * MiB),
        ("512MiB", 512 * MiB),
        ("512mb", 512 * MiB),
        (" 64m ", 64 * MiB),
        ("100", 100),
        (100, 100),
    ],
)
def test_parse_size_accepts(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["4 gigs", "", "m", "-1m", "0", "0m", "0.0001k", "1e3", "12x", "1.5.2g", 0, -5, True, 1.5, None, ["1g"]],
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        ("1H", 3600.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        ("10", 10.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["5 minutes", "", "m", "0s", "0", "1m30", "30x", "h1", "-5s", 0, -1, True, None, ["5m"]],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("size", [1, 1000, KiB, 7 * KiB + 1, 512 * MiB, 1536 * MiB, 4 * GiB])
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["512m", "4g", "1k", "100"])
def test_canonical_size_text_round_trips(text: str) -> None:
    assert format_size(parse_size(text)) == text


@pytest.mark.parametrize("seconds", [1.0, 45.0, 60.0, 90.0, 1.5, 5400.0, 86400.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_parse_duration_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 2024-13-45\n", "invalid value '2024-13-45'"),
        ("a: " + "9" * 5000 + "\n", "integer string conversion"),
        ("a: " + "[" * 900 + "]" * 900 + "\n", "nested more than 64 levels"),
        ("a: &x [*x]\n", "nested more than 64 levels"),
        ("a: *nope\n", "undefined alias 'nope'"),
        ("a: !!python/object/apply:os.system {b: 1}\n", "unsupported tag '!!python/object/apply:os.system'"),
    ],
)
def test_hostile_yaml_rejected_cleanly(text: str, expected: str) -> None:
    from orchestrator import yamlsource

    with pytest.raises(yamlsource.YamlProblem) as caught:
        yamlsource.load(text)

    assert expected in caught.value.message


@pytest.mark.parametrize("value", ["true", "1.0", "'1'"])
def test_version_must_be_integer_one(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, VALID.replace("version: 1", f"version: {value}"))

    problems = load_problems(path)

    assert any("version: invalid version" in problem for problem in problems), problems


def test_control_character_in_path_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("source: ./src", 'source: "./s\\x00rc"'))

    problems = load_problems(path)

    assert any("invalid path" in problem for problem in problems), problems


def test_example_manifest_matches_schema() -> None:
    import jsonschema
    import yaml

    from orchestrator.manifest import manifest_schema

    repository = Path(__file__).resolve().parents[2]
    document = yaml.safe_load((repository / "configs" / "agents.example.yaml").read_text(encoding="utf-8"))

    jsonschema.validate(document, manifest_schema())


def test_policy_monitor_and_shutdown_errors_name_the_field(load_data: Callable[[ManifestData], LoadedManifest],
                                                           source_dir: Path) -> None:
    data = manifest_data(source_dir, policy={"tamper": "warn", "escape-attempt": "ignore"},
                         monitor={"posture_interval": "0.1s"}, shutdown={"deadline": 0})
    with pytest.raises(ManifestError) as caught:
        load_data(data)
    text = str(caught.value)
    assert "policy.tamper: invalid key 'tamper'; use 'write-conflict'" in text
    assert "policy.escape-attempt: invalid value 'ignore'; use 'shutdown', 'stop-agent' or 'warn'" in text
    assert "monitor.posture_interval" in text
    assert "shutdown.deadline" in text


def test_policy_defaults_fill_every_kind(plan_for: Callable[..., RunPlan], source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir, policy={"tampering": "warn"}))
    assert plan.policy["tampering"] == "warn"
    assert plan.policy["write-conflict"] == "shutdown"
    assert len(plan.policy) == 10
