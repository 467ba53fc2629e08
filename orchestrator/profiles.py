"""Agent profiles: named presets that fill in an agent's image, command and needs.

A profile lives in `agents/<name>.yaml` of the checkout and says how to start
one agent CLI inside the sandbox: its image, its command template, how the
prompt reaches it, which hosts it needs, which secrets the egress broker adds
for it, and which folders it must be able to write. `custom` is the profile
with no preset: the manifest gives the image and command itself.

The model here is the contract between the profile files, the manifest (which
may add hosts and override the image or command) and the egress broker (which
reads `hosts` and `apis`). Loading and listing live in this module too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPOSITORY_ROOT / "agents"

# Every profile a manifest may name; the presets join as their files in agents/ land.
PROFILE_NAMES = frozenset({"custom"})

# host:port, a DNS name with an explicit port; IP literals are refused by the broker unless listed.
HOST_PORT = re.compile(r"(?=.{1,260}$)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?:[0-9]{1,5}")


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
    variable: str | None = None


class ModelApi(ProfileModel):
    """A model API that the agent reaches through the broker, which adds the real key.

    The agent's `base_url_env` variable points at the broker's route for this API
    (http://<broker>:<port>/<name>); the broker forwards to `upstream` with the
    secret in `header`. Variables in `placeholder_env` get a fixed placeholder so
    that a CLI which insists on a key starts; the real key never enters the sandbox.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    upstream: str = Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    base_url_env: str
    secret: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
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
    # What does not work yet, shown by `orchestrate agents` and in the README.
    limits: list[str] = []
