"""Sizes (`512m`, `4g`) and durations (`90s`, `1h30m`) as written in manifests."""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?:(?P<unit>[kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

_DURATION_PART = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

SIZE_HINT = "use a number with k, m or g, such as 512m"
DURATION_HINT = "use a number with s, m or h, such as 90s or 30m"


def parse_size(value: object) -> int:
    """Return a size in bytes; plain integers are bytes and suffixes are powers of 1024."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}; {SIZE_HINT}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"invalid size {value}; the size must be positive; {SIZE_HINT}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}; {SIZE_HINT}")

    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size '{value}'; {SIZE_HINT}")
    size = int(float(match["number"]) * _SIZE_FACTORS[(match["unit"] or "").lower()])
    if size <= 0:
        raise ValueError(f"invalid size '{value}'; the size must be positive; {SIZE_HINT}")
    return size


def parse_duration(value: object) -> float:
    """Return a duration in seconds; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}; {DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"invalid duration {value!r}; {DURATION_HINT}")

    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {value!r}; the duration must be a positive, finite number")
    return seconds


def _parse_duration_text(value: str) -> float:
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)

    position = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match["number"]) * _DURATION_FACTORS[match["unit"]]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration '{value}'; {DURATION_HINT}")
    return seconds


def format_size(size: int) -> str:
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.2f}s"
