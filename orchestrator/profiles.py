"""Agent profiles: named presets that fill in an agent's image, command and needs.

Only `custom` exists so far: the manifest gives the image and command itself.
"""

from __future__ import annotations

PROFILE_NAMES = frozenset({"custom"})
