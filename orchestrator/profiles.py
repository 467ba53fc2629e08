"""Agent profiles: named presets that fill in an agent's image, command and needs.

A profile lives in `agents/<name>.yaml` of the checkout and says how to start
one agent CLI inside the sandbox: its image, its command template, how the
prompt reaches it, which hosts it needs, which secrets the egress broker adds
for it, and which folders it must be able to write. `custom` is the profile
with no preset: the manifest gives the image and command itself.

The model here is the contract between the profile files, the manifest (which
may add hosts and override the image or command) and the egress broker (which
reads `network`, `hosts` and `apis`). `load_profile` and `list_profiles` read
and validate the files; a broken file raises `ProfileError` naming its line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import yamlsource
from .errors import ManifestError, Problem
from .layout import HOME_TARGET
from .manifest_errors import problems_from_validation

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPOSITORY_ROOT / "agents"

# Every profile a manifest may name: `custom`, plus one per file in agents/.
PROFILE_NAMES = frozenset({"custom", *(path.stem for path in PROFILES_DIR.glob("*.yaml"))})

# host:port, a DNS name with an explicit port; IP literals are refused by the broker unless listed.
HOST_PORT = re.compile(r"(?=.{1,260}$)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?:[0-9]{1,5}")
VARIABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

# The words of a command template that orchestrate replaces; no other `{...}` word is allowed.
PROMPT_WORD = "{prompt}"
PROMPT_FILE_WORD = "{prompt_file}"
TEMPLATE_WORD = re.compile(r"\{[A-Za-z_]+\}")

# The value of every placeholder variable, so a CLI that insists on a key starts without a real one.
PLACEHOLDER_KEY = "orchestrate-placeholder-key"


class ProfileError(ManifestError):
    """A profile file that cannot be loaded; `problems` lists every problem with its line."""


class ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptDelivery(ProfileModel):
    """How the manifest's `prompt:` reaches the CLI.

    argument: the command template's `{prompt}` word is replaced by the prompt text.
    file:     the prompt is written to a read-only file and `{prompt_file}` names it.
    stdin:    the prompt is written to the CLI's standard input, which is then closed.
    env:      the variable named in `variable` holds the prompt.
    """

    via: Literal["argument", "file", "stdin", "env"]
    variable: str | None = Field(default=None, pattern=VARIABLE_NAME)

    @model_validator(mode="after")
    def _variable_for_env(self) -> PromptDelivery:
        if self.via == "env" and self.variable is None:
            raise ValueError("prompt delivery via env needs `variable`, the name of the variable to set")
        if self.via != "env" and self.variable is not None:
            raise ValueError(f"`variable` only applies to delivery via env, not via {self.via}; remove it")
        return self


class ModelApi(ProfileModel):
    """A model API that the agent reaches through the broker, which adds the real key.

    The agent's `base_url_env` variable points at the broker's route for this API
    (http://<broker>:<port>/<name>); the broker forwards to `upstream` with the
    secret in `header`. Variables in `placeholder_env` get a fixed placeholder so
    that a CLI which insists on a key starts; the real key never enters the sandbox.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    upstream: str = Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    base_url_env: str = Field(pattern=VARIABLE_NAME)
    secret: str = Field(pattern=VARIABLE_NAME)
    header: str = Field(pattern=r"^[A-Za-z0-9-]+$")
    scheme: Literal["plain", "bearer"] = "plain"
    placeholder_env: list[str] = []


class Profile(ProfileModel):
    name: str
    description: str
    # The image and command template; None only for `custom`, where the manifest gives them.
    image: str | None = None
    command: list[str] | None = None
    prompt: PromptDelivery | None = None
    # none: no network at all. allowlist: one route out, through the egress broker.
    network: Literal["none", "allowlist"] = "none"
    # Hosts the broker lets the agent reach with CONNECT (HTTPS), as host:port.
    hosts: list[str] = []
    apis: list[ModelApi] = []
    # Fixed, non-secret variables the CLI needs (such as switching off its self-updater).
    env: dict[str, str] = {}
    # Folders the CLI writes its state to, each given a size-limited tmpfs.
    config_dirs: list[str] = []
    # Host variables a manifest may not pass to this agent: credentials the CLI would use directly, such
    # as a GitHub token, and settings that would route the CLI around the broker, such as a second base URL.
    forbidden_env: list[str] = []
    # What does not work yet, shown by `orchestrate agents` and in the README.
    limits: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        _check_command(self)
        _check_names(self)
        return self

    @property
    def secrets(self) -> list[str]:
        """Names of the host variables whose values the broker adds for this profile."""
        return list(dict.fromkeys(api.secret for api in self.apis))


def _check_command(profile: Profile) -> None:
    if profile.name != "custom" and (profile.image is None or not profile.command):
        raise ValueError("a profile other than custom needs both `image` and `command`")

    words = profile.command or []
    used = {match for word in words for match in TEMPLATE_WORD.findall(word)}
    unknown = sorted(used - {PROMPT_WORD, PROMPT_FILE_WORD})
    if unknown:
        raise ValueError(f"command uses {', '.join(unknown)}; only {PROMPT_WORD} and {PROMPT_FILE_WORD} are replaced")

    if profile.prompt is None or not words:
        return
    needed = {"argument": PROMPT_WORD, "file": PROMPT_FILE_WORD}.get(profile.prompt.via)
    if needed is not None and not any(needed in word for word in words):
        raise ValueError(f"prompt delivery via {profile.prompt.via} needs {needed} in the command; add it")


def _check_names(profile: Profile) -> None:
    for host in profile.hosts:
        if not HOST_PORT.fullmatch(host):
            raise ValueError(f"invalid host {host!r}; write a lowercase DNS name and port, such as api.example.com:443")

    home = PurePosixPath(HOME_TARGET)
    for folder in profile.config_dirs:
        path = PurePosixPath(folder)
        below_home = path.is_absolute() and path.is_relative_to(home) and path != home
        if not below_home or ".." in path.parts:
            raise ValueError(f"invalid config dir {folder!r}; use an absolute folder below {HOME_TARGET}")

    for name in [*profile.env, *profile.forbidden_env]:
        if not re.fullmatch(VARIABLE_NAME, name):
            raise ValueError(f"invalid variable name {name!r}; use letters, digits and underscores")

    leaked = sorted(set(profile.secrets) & set(profile.env))
    if leaked:
        # The agent may hold a placeholder under the secret's name, never a value from the profile.
        raise ValueError(f"env sets {', '.join(leaked)}, the name of a secret; list it in placeholder_env instead")


def profile_path(name: str) -> Path:
    return PROFILES_DIR / f"{name}.yaml"


@lru_cache(maxsize=32)
def load_profile(name: str) -> Profile:
    """Read and validate `agents/<name>.yaml`; raise ProfileError naming the file, line and fix."""
    path = profile_path(name)
    label = str(path)
    if name not in PROFILE_NAMES:
        known = ", ".join(sorted(PROFILE_NAMES))
        raise ProfileError([Problem(label, None, "", f"unknown profile '{name}'; use one of: {known}")])
    if name == "custom" and not path.exists():
        return Profile(name="custom", description="any image and command the manifest gives")

    try:
        document = yamlsource.load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError([Problem(label, None, "", f"cannot read the profile: {exc.strerror}; "
                                    "run orchestrate from a checkout of the project")]) from exc
    except UnicodeDecodeError as exc:
        raise ProfileError([Problem(label, None, "", "not UTF-8 text; save the file as UTF-8")]) from exc
    except yamlsource.YamlProblem as exc:
        raise ProfileError([Problem(label, exc.line, "", exc.message)]) from exc

    if not isinstance(document.data, dict):
        raise ProfileError([Problem(label, 1, "", "the top level must be a mapping of profile fields")])
    try:
        profile = Profile.model_validate(document.data)
    except ValidationError as exc:
        raise ProfileError(problems_from_validation(exc, document, label)) from None
    if profile.name != name:
        line = document.line_of(("name",))
        raise ProfileError([Problem(label, line, "name", f"is '{profile.name}' but the file is {path.name}; "
                                    f"set name: {name}")])
    return profile


def list_profiles() -> list[Profile]:
    """Load every profile, sorted by name; raise ProfileError listing the problems of every broken file."""
    profiles = []
    problems: list[Problem] = []
    for name in sorted(PROFILE_NAMES):
        try:
            profiles.append(load_profile(name))
        except ProfileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ProfileError(problems)
    return profiles
