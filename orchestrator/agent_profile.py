"""Resolve one manifest agent against its profile: image, command, prompt and the checks between them.

The manifest's `image` and `command` override the profile's. A prompt reaches
the command through the `{prompt}` word (replaced by the text) or the
`{prompt_file}` word (replaced by the path of a read-only file holding it), and
through the profile's delivery: standard input or a variable. Every rule that
needs only the manifest and the profile files is checked here, at load time;
reading a prompt file happens in the plan.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .profiles import PROMPT_FILE_WORD, PROMPT_WORD, Profile, load_profile

if TYPE_CHECKING:
    from .manifest import Agent, Manifest

# Path of the read-only prompt file inside the container.
PROMPT_TARGET = "/run/orchestrate/prompt.txt"
# Linux caps one argument at 128 KiB (MAX_ARG_STRLEN); a prompt passed as an argument stays below it.
MAX_ARGUMENT_PROMPT = 100 * 1024
MAX_PROMPT = 1024 * 1024
# The shell step that feeds the prompt file to the CLI's standard input; the lifeline owns the container's.
STDIN_WRAPPER = ("/bin/sh", "-c", f'exec "$@" <{PROMPT_TARGET}', "orchestrate-prompt")

FieldProblem = tuple[tuple[str | int, ...], str]


@dataclass(frozen=True)
class ResolvedAgent:
    profile: Profile
    image: str
    # The command with its `{prompt}` and `{prompt_file}` words not yet replaced.
    template: tuple[str, ...]

    @property
    def delivery(self) -> str | None:
        return self.profile.prompt.via if self.profile.prompt else None

    def uses_prompt_file(self) -> bool:
        """Tell whether the container needs the prompt file mounted."""
        return self.delivery in ("file", "stdin") or any(PROMPT_FILE_WORD in word for word in self.template)


def resolve(agent: Agent, default_image: str) -> ResolvedAgent:
    """Return the agent's image and command template, the manifest's own before the profile's."""
    profile = load_profile(agent.profile)
    image = agent.image or profile.image or default_image
    template = tuple(agent.command or profile.command or ())
    return ResolvedAgent(profile=profile, image=image, template=template)


def agent_image(agent: Agent, default_image: str) -> str:
    return resolve(agent, default_image).image


def final_command(resolved: ResolvedAgent, prompt: str | None) -> tuple[str, ...]:
    """Replace the template's prompt words and, for stdin delivery, feed the prompt file to the command."""
    if prompt is None:
        return resolved.template
    words = tuple(word.replace(PROMPT_WORD, prompt).replace(PROMPT_FILE_WORD, PROMPT_TARGET)
                  for word in resolved.template)
    if resolved.delivery == "stdin":
        return (*STDIN_WRAPPER, *words)
    return words


def prompt_env(resolved: ResolvedAgent, prompt: str | None) -> dict[str, str]:
    delivery = resolved.profile.prompt
    if prompt is None or delivery is None or delivery.via != "env" or delivery.variable is None:
        return {}
    return {delivery.variable: prompt}


def shortened(text: str, limit: int = 60) -> str:
    """Return the prompt shortened for display, on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def agent_problems(manifest: Manifest, index: int) -> list[FieldProblem]:
    """Check one agent against its profile: command, prompt words and variables that must stay out."""
    agent = manifest.agents[index]
    resolved = resolve(agent, manifest.defaults.image)
    profile = resolved.profile
    here: tuple[str | int, ...] = ("agents", index)
    problems: list[FieldProblem] = []

    if not resolved.template:
        problems.append(((*here, "command"), f"command is missing; profile {profile.name} gives none, so add one, "
                         "such as command: [python3, task.py]"))
        return problems

    problems.extend(_prompt_problems(agent, resolved, here))

    for field_path, names in (((*here, "env"), agent.env), (("defaults", "env"), manifest.defaults.env)):
        for name in names:
            reason = _withheld_reason(profile, name)
            if reason:
                problems.append((field_path, f"{name} is {reason}; remove {name} from env"))
    return problems


def _withheld_reason(profile: Profile, name: str) -> str | None:
    """Return why the profile keeps host variable `name` from its agent, or None when it does not."""
    if name in profile.secrets:
        return (f"a secret of profile {profile.name}, which the egress broker adds on the way out, so the real "
                "key never enters the sandbox")
    if name in profile.forbidden_env:
        return (f"withheld by profile {profile.name}: a credential the CLI would use itself, or a setting that "
                "would route it around the egress broker")
    return None


def _prompt_problems(agent: Agent, resolved: ResolvedAgent, here: tuple[str | int, ...]) -> list[FieldProblem]:
    profile = resolved.profile
    words_used = [word for word in (PROMPT_WORD, PROMPT_FILE_WORD) if any(word in part for part in resolved.template)]
    from_profile = agent.command is None

    if agent.prompt is None:
        if words_used and not from_profile:
            return [((*here, "command"), f"command uses {' and '.join(words_used)} but the agent has no prompt; "
                     "add prompt: with the text, or prompt: {file: task.md}")]
        if from_profile and (words_used or profile.prompt is not None):
            return [((*here, "prompt"), f"profile {profile.name} needs a prompt; add prompt: with the text, "
                     "or prompt: {file: task.md}")]
        return []

    if not words_used and resolved.delivery not in ("stdin", "env"):
        command = shlex.join(resolved.template)
        return [((*here, "prompt"), f"the prompt never reaches the command {command!r}; put {PROMPT_WORD} "
                 f"(the text) or {PROMPT_FILE_WORD} (a file holding it) among its words")]
    if isinstance(agent.prompt, str):
        return prompt_text_problems(agent.prompt, resolved, (*here, "prompt"))
    return []


def prompt_text_problems(text: str, resolved: ResolvedAgent, field_path: tuple[str | int, ...]) -> list[FieldProblem]:
    """Check the prompt's size, for every delivery and for the command-line limit of an argument."""
    size = len(text.encode("utf-8"))
    if not text.strip():
        return [(field_path, "the prompt is empty; write the task for the agent")]
    if size > MAX_PROMPT:
        return [(field_path, f"the prompt has {size} bytes; the limit is {MAX_PROMPT}, so shorten it")]
    as_argument = any(PROMPT_WORD in word for word in resolved.template)
    if as_argument and size > MAX_ARGUMENT_PROMPT:
        return [(field_path, f"the prompt has {size} bytes, too long for one command-line argument (limit "
                 f"{MAX_ARGUMENT_PROMPT}); pass it as a file with {PROMPT_FILE_WORD} in the command")]
    if "\x00" in text:
        return [(field_path, "the prompt contains a NUL character; remove it")]
    return []
