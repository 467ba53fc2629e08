"""Manifest v1: the YAML file that lists the agents of a run, as pydantic models.

Every model forbids unknown keys, so a misspelt field is an error rather than a
silently ignored setting. `load_manifest` returns a validated `Manifest` or
raises `ManifestError` with one located problem per mistake.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from . import yamlsource
from .claims import check_pattern
from .errors import ManifestError, Problem
from .manifest_egress import ApiName, ApiOverride, Broker, Egress, NetworkMode, SecretSource
from .manifest_errors import problems_from_validation, render_path
from .profiles import PROFILE_NAMES
from .units import parse_duration, parse_size

DEFAULT_IMAGE = "orchestrate/base:latest"
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_MEMORY = 6 * 1024 * 1024  # Docker rejects a memory limit below 6 MiB.

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"], "examples": ["512m", "4g"]}),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": ["string", "number"], "examples": ["90s", "30m"]}),
]


def _duration_or_zero(value: object) -> object:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return parse_duration(value)


# A duration that may also be 0, such as a grace period that skips SIGTERM.
DurationOrZero = Annotated[
    float,
    BeforeValidator(_duration_or_zero),
    WithJsonSchema({"type": ["string", "number"], "examples": ["0", "200ms", "1s"]}),
]


# A Docker image reference: [registry[:port]/]path[:tag][@digest], lowercase path components.
IMAGE_REFERENCE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


def _check_image(value: object) -> object:
    if isinstance(value, str) and not IMAGE_REFERENCE.fullmatch(value):
        raise ValueError(
            f"invalid image reference '{value}'; use lowercase repository names with an optional tag, "
            "such as orchestrate/base:latest"
        )
    return value


ImageReference = Annotated[str, BeforeValidator(_check_image)]


def _check_env_name(value: object) -> object:
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise ValueError(
            f"invalid variable name {value!r}; use letters, digits and underscores, "
            "not starting with a digit, such as MY_TOKEN"
        )
    if value.upper().startswith("DOCKER_"):
        raise ValueError(
            f"variable {value} is not allowed: DOCKER_* variables can hand an agent the Docker "
            "daemon, which is root on the host; remove it"
        )
    return value


EnvName = Annotated[str, BeforeValidator(_check_env_name)]


def _check_claim_glob(value: object) -> object:
    """Validate a `writes` or `shared` glob: a relative POSIX pattern inside the output tree."""
    if not isinstance(value, str):
        raise ValueError(f"invalid glob {value!r}; use a relative pattern such as docs/**")
    check_pattern(value, noun="glob")
    return value


ClaimGlob = Annotated[str, BeforeValidator(_check_claim_glob)]


def _split_command(value: object) -> object:
    # A string is split like a shell would split words, but never run by a shell.
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"invalid command '{value}': {exc}; fix the quoting") from exc
        return words
    return value


def _check_host_path(value: object) -> object:
    if isinstance(value, str) and any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"invalid path {value!r}; remove the control characters")
    # os.path.expanduser returns a path it cannot expand unchanged; Path.expanduser, used later, raises.
    if isinstance(value, str) and value.startswith("~") and os.path.expanduser(value) == value:
        user = value[1:].split("/", 1)[0]
        reason = f"no user '{user}' on this host" if user else "the home folder is unknown (HOME is not set)"
        raise ValueError(f"invalid path '{value}': {reason}; write the folder's absolute path")
    return value


HostPath = Annotated[str, BeforeValidator(_check_host_path)]


def _check_version(value: object) -> object:
    # YAML's true and 1.0 compare equal to 1 in Python; only the integer 1 is version 1.
    if type(value) is not int:
        raise ValueError(f"invalid version {value!r}; write version: 1")
    return value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Model):
    """Limits of one container; `tmp` and `home` size the tmpfs at /tmp and $HOME."""

    cpus: float = Field(default=1.0, ge=0.01, le=1024)
    memory: Size = 1024**3
    pids: int = Field(default=256, ge=8, le=1_000_000)
    tmp: Size = 256 * 1024**2
    home: Size = 64 * 1024**2

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, value: int) -> int:
        if value < MIN_MEMORY:
            raise ValueError(f"memory limit {value} bytes is below Docker's minimum; use 6m or more")
        return value


class ResourceOverrides(Model):
    """Per-agent limits; unset fields fall back to `defaults.resources`."""

    cpus: float | None = Field(default=None, ge=0.01, le=1024)
    memory: Size | None = None
    pids: int | None = Field(default=None, ge=8, le=1_000_000)
    tmp: Size | None = None
    home: Size | None = None

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_MEMORY:
            raise ValueError(f"memory limit {value} bytes is below Docker's minimum; use 6m or more")
        return value


class Limits(Model):
    """Publishing limits of one agent: bytes per file, bytes in all, and the number of files."""

    max_file_size: Size = 64 * 1024**2
    max_total_bytes: Size = 1024**3
    max_files: int = Field(default=100_000, ge=1, le=10_000_000)


class LimitOverrides(Model):
    max_file_size: Size | None = None
    max_total_bytes: Size | None = None
    max_files: int | None = Field(default=None, ge=1, le=10_000_000)


# Isolation of an agent's container from the host kernel: runc shares it, gvisor runs the agent on
# gVisor's user-space kernel (the engine's runsc runtime).
Isolation = Literal["runc", "gvisor"]


class Defaults(Model):
    image: ImageReference = DEFAULT_IMAGE
    isolation: Isolation = "runc"
    resources: Resources = Resources()
    timeout: Duration = 30 * 60.0
    env: list[EnvName] = []
    # Network access of every agent that sets none itself; unset means the profile's, else none.
    network: NetworkMode | None = None
    egress: Egress = Egress()
    secrets: dict[EnvName, SecretSource] = {}


ViolationKind = Literal[
    "write-conflict",
    "claim-violation",
    "escape-attempt",
    "quota-exceeded",
    "tampering",
    "posture-drift",
    "monitor-failure",
    "egress-denied",
    "egress-limit",
    "broker-failure",
]
PolicyAction = Literal["shutdown", "stop-agent", "warn"]


class Monitor(Model):
    """Settings of the safety monitor."""

    # Seconds between re-inspections of every container against the plan.
    posture_interval: Duration = Field(default=5.0, ge=0.5, le=3600)
    # Seconds between full scans of every workspace; they catch what inotify missed.
    rescan_interval: Duration = Field(default=10.0, ge=1, le=3600)
    # Publish closed files while agents run, instead of only after each agent exits.
    publish_while_running: bool = True
    # Quiet time after an agent's last closed file before its files are published.
    publish_debounce: Duration = Field(default=0.5, ge=0.05, le=600)


class Shutdown(Model):
    """Deadline and grace period of a stop after a violation, Ctrl-C or `orchestrate stop`."""

    # Every container has exited by then; the grace period is cut to fit.
    deadline: Duration = Field(default=15.0, ge=1, le=3600)
    # Seconds between SIGTERM and SIGKILL when a violation stops the run: short, since speed matters more
    # than a clean exit for an agent that broke a rule, but long enough for a tool to flush what it holds.
    grace: DurationOrZero = Field(default=0.1, ge=0, le=3600)


class Source(Model):
    """The host folder agents work on, at /workspace/src.

    `read-only` mounts the folder itself read-only in every agent. `copy` gives every agent a private
    writable copy: a clone of the committed HEAD for a git repository, a file copy for any other folder.
    """

    path: HostPath = Field(min_length=1)
    mode: Literal["read-only", "copy"] = "read-only"


class PromptFile(Model):
    """A prompt read from a file, relative to the manifest's folder."""

    file: HostPath = Field(min_length=1)


class Agent(Model):
    name: str
    profile: str = "custom"
    description: str | None = None
    image: ImageReference | None = None
    isolation: Isolation | None = None
    # Optional when the profile gives a command template; the manifest's command replaces the profile's.
    command: Annotated[list[str] | None, BeforeValidator(_split_command)] = Field(default=None, min_length=1)
    # The task for the agent's CLI: text, or {file: path}. The profile sets how it reaches the CLI.
    prompt: str | PromptFile | None = None
    workdir: str = "/workspace/output"
    env: list[EnvName] = []
    resources: ResourceOverrides = ResourceOverrides()
    timeout: Duration | None = None
    writes: list[ClaimGlob] = []
    limits: LimitOverrides = LimitOverrides()
    workspace: HostPath | None = Field(default=None, min_length=1)
    # Run the command in a terminal that `orchestrate run --attach` and `orchestrate attach` connect to.
    interactive: bool = False
    network: NetworkMode | None = None
    egress: Egress = Egress()
    apis: dict[ApiName, ApiOverride] = {}
    secrets: dict[EnvName, SecretSource] = {}

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL.fullmatch(value):
            raise ValueError(
                f"invalid agent name '{value}'; use lowercase letters, digits and '-', "
                "at most 63 characters, starting and ending with a letter or digit"
            )
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILE_NAMES:
            known = ", ".join(sorted(PROFILE_NAMES))
            raise ValueError(f"unknown profile '{value}'; use one of: {known}")
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: str) -> str:
        if not value.startswith("/") or ".." in PurePosixPath(value).parts:
            raise ValueError(
                f"invalid workdir '{value}'; use an absolute path in the container, "
                "such as /workspace/output"
            )
        return value

    @field_validator("command")
    @classmethod
    def _non_empty_words(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value or not value[0].strip():
            raise ValueError("command is empty; give the program to run, such as [python3, app.py]")
        if any("\x00" in word for word in value):
            raise ValueError("command contains a NUL character; remove it")
        return value


class SharedPath(Model):
    """A path in the output tree that several agents may write, and how."""

    path: ClaimGlob
    mode: Literal["exclusive", "append"] = "exclusive"


def _source_from_text(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


class Manifest(Model):
    version: Annotated[Literal[1], BeforeValidator(_check_version)]
    name: str
    description: str | None = None
    source: Annotated[Source, BeforeValidator(_source_from_text)]
    output: HostPath = Field(default="./generated", min_length=1)
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    agents: list[Agent] = Field(min_length=1, max_length=500)
    shared: list[SharedPath] = []
    # What a violation of each kind does; a kind left out stops the whole run, except egress-denied (warn).
    policy: dict[ViolationKind, PolicyAction] = {}
    monitor: Monitor = Monitor()
    shutdown: Shutdown = Shutdown()
    broker: Broker = Broker()

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL.fullmatch(value):
            raise ValueError(
                f"invalid manifest name '{value}'; use lowercase letters, digits and '-', "
                "at most 63 characters, such as nightly-review"
            )
        return value


def manifest_schema() -> dict[str, Any]:
    """Return the manifest's JSON Schema, with the shorthand forms the loader also accepts."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrate manifest, version 1"
    properties = schema["properties"]
    agent = schema["$defs"]["Agent"]["properties"]

    # Validators that run before type checks accept these forms, which pydantic cannot see.
    properties["source"] = {"anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/$defs/Source"}]}
    agent["command"] = {"anyOf": [{"type": "string", "minLength": 1}, agent["command"]]}
    label = {"type": "string", "pattern": f"^{DNS_LABEL.pattern}$", "maxLength": 63}
    properties["name"] = {**properties["name"], **label}
    agent["name"] = {**agent["name"], **label}
    return schema


class LoadedManifest(BaseModel):
    """A validated manifest with where it came from; relative paths resolve against `base_dir`."""

    model_config = ConfigDict(frozen=True)

    manifest: Manifest
    path: Path
    base_dir: Path
    sha256: str
    lines: dict[tuple[str | int, ...], int]

    def line_of(self, *field_path: str | int) -> int | None:
        return yamlsource.LocatedDocument(None, self.lines).line_of(field_path)

    def problem(self, field_path: tuple[str | int, ...], message: str, *, cause: str | None = None) -> Problem:
        return Problem(str(self.path), self.line_of(*field_path), render_path(field_path), message, cause)


def load_manifest(path: Path) -> LoadedManifest:
    """Read, parse and validate a manifest file."""
    file_label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([Problem(file_label, None, "", "file not found; check the path")]) from None
    except IsADirectoryError:
        raise ManifestError([Problem(file_label, None, "", "is a folder; give a manifest file")]) from None
    except OSError as exc:
        raise ManifestError([Problem(file_label, None, "", f"cannot read: {exc.strerror}")]) from exc

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise ManifestError([Problem(file_label, None, "", message)]) from exc

    try:
        document = yamlsource.load(text)
    except yamlsource.YamlProblem as exc:
        raise ManifestError([Problem(file_label, exc.line, "", exc.message)]) from exc

    manifest = parse_manifest(document, file_label)
    return LoadedManifest(
        manifest=manifest,
        path=path,
        base_dir=path.resolve().parent,
        sha256=hashlib.sha256(raw).hexdigest(),
        lines=document.lines,
    )


def parse_manifest(document: yamlsource.LocatedDocument, file_label: str) -> Manifest:
    """Validate a parsed document; raise ManifestError listing every problem."""
    data: Any = document.data
    if data is None:
        raise ManifestError([Problem(file_label, None, "", "file is empty; start from configs/agents.example.yaml")])
    if not isinstance(data, dict):
        message = f"the top level must be a mapping of fields, not {type(data).__name__}"
        raise ManifestError([Problem(file_label, 1, "", message)])

    # Duplicates are found on the raw data, so they are reported next to field errors too.
    problems = _duplicate_problems(data, document, file_label)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, document, file_label))
        problems.sort(key=lambda problem: (problem.line or 0, problem.field))
        raise ManifestError(problems) from None

    problems.extend(_profile_problems(manifest, document, file_label))
    if problems:
        raise ManifestError(problems)
    return manifest


def _profile_problems(manifest: Manifest, document: yamlsource.LocatedDocument, file_label: str) -> list[Problem]:
    """Check each agent against its profile: the command, the prompt and variables the profile withholds."""
    from .agent_profile import agent_problems

    problems = []
    for index in range(len(manifest.agents)):
        for field_path, message in agent_problems(manifest, index):
            problems.append(Problem(file_label, document.line_of(field_path), render_path(field_path), message))
    return problems


def _duplicate_problems(data: dict[str, Any], document: yamlsource.LocatedDocument, file_label: str) -> list[Problem]:
    problems: list[Problem] = []
    for section, key, noun, fix in (
        ("agents", "name", "agent name", "rename one"),
        ("shared", "path", "shared path", "list it once"),
    ):
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        first_index: dict[str, int] = {}
        for index, entry in enumerate(entries):
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, str):
                continue
            if value in first_index:
                path: tuple[str | int, ...] = (section, index, key)
                message = f"duplicate {noun} '{value}' (also {section}[{first_index[value]}]); {fix}"
                problems.append(Problem(file_label, document.line_of(path), render_path(path), message))
            first_index.setdefault(value, index)
    return problems
