"""The lifeline wrapper keeps the image's entrypoint and runs the agent's command under /bin/sh."""

from __future__ import annotations

import pytest

from orchestrator.lifeline import WRAPPER_NAME, WRAPPER_SCRIPT, wrapped_command


@pytest.mark.parametrize(
    ("image_entrypoint", "expected_command"),
    [
        ((), ("python3", "tool.py")),
        (("/usr/bin/tini", "--"), ("python3", "tool.py")),
        (("tini", "-g", "--"), ("python3", "tool.py")),
        (("/usr/local/bin/claude",), ("/usr/local/bin/claude", "python3", "tool.py")),
        (("dumb-init", "/entry.sh"), ("/entry.sh", "python3", "tool.py")),
    ],
)
def test_image_entrypoint_kept_unless_init(
    image_entrypoint: tuple[str, ...], expected_command: tuple[str, ...]
) -> None:
    entrypoint, command = wrapped_command(image_entrypoint, ("python3", "tool.py"))

    assert entrypoint == ("/bin/sh", "-c", WRAPPER_SCRIPT, WRAPPER_NAME)
    assert command == expected_command


# The wrapper itself is only ever run inside containers (tests/integration): on end of input it
# kills every process its user may signal, which on a host would be every process of that user.
