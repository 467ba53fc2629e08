"""Turn pydantic validation errors into located, actionable manifest problems."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .errors import Problem

if TYPE_CHECKING:
    from .yamlsource import LocatedDocument

# Pydantic adds these segments to a location when it tries a tagged type or a
# validator function; they are not fields the user wrote.
_INTERNAL_SEGMENTS = {"function-before[_source_from_text(), Source]"}

_TYPE_NAMES = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
}


def render_path(path: tuple[str | int, ...]) -> str:
    """Render ("agents", 1, "name") as agents[1].name."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def problems_from_validation(
    exc: ValidationError, document: LocatedDocument, file_label: str
) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for error in exc.errors(include_url=False):
        path = tuple(part for part in error["loc"] if part not in _INTERNAL_SEGMENTS)
        message = _message(error, path, document)
        if path and path[-1] == "[key]":
            # pydantic marks a bad mapping key with a "[key]" segment; the key itself is the field in error.
            path = path[:-1]
            message = message.replace("invalid value", "invalid key", 1)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        problems.append(Problem(file_label, document.line_of(path), render_path(path), message))

    problems.sort(key=lambda problem: (problem.line or 0, problem.field))
    return problems


def _message(error: Any, path: tuple[str | int, ...], document: LocatedDocument) -> str:
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}

    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind == "missing":
        return "missing required field; add it"
    if kind == "extra_forbidden":
        return _unknown_field_message(path, document)
    if kind == "literal_error":
        return f"invalid value {value!r}; use {context.get('expected', 'an allowed value')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _bound_message(kind, value, context)
    if kind == "too_short":
        return "must not be empty; list at least one entry"
    if kind == "too_long":
        return f"has {context.get('actual_length')} entries; the limit is {context.get('max_length')}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in _TYPE_NAMES and value is None:
        # YAML reads `~`, `null` and an empty value as null, which surprises people writing `source: ~`.
        return f"expected {_TYPE_NAMES[kind]}, got no value; YAML reads ~, null and an empty value as null, so quote it"
    if kind == "string_type" and isinstance(value, bool | int | float):
        # YAML reads true, yes, on, 1 and 1.0 as booleans and numbers; quoting keeps them text.
        return f"expected text, got {_describe(value)}; quote the value, as in \"{str(value).lower()}\""
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}"
    if kind == "string_pattern_mismatch" and path and str(path[-1]) in _PATTERN_HINTS:
        return f"invalid value {_describe(value)}; use {_PATTERN_HINTS[str(path[-1])]}"
    return f"{error['msg']} (value {_describe(value)})"


# Descriptions of the values that fields with a pattern accept, shown in place of the regular expression.
_PATTERN_HINTS = {
    "upstream": "an http or https URL without query or fragment, such as https://api.example.com",
    "header": "a header name of letters, digits and dashes, such as x-api-key",
    "base_url_env": "a variable name of letters, digits and underscores, such as ANTHROPIC_BASE_URL",
    "secret": "a variable name of letters, digits and underscores, such as ANTHROPIC_API_KEY",
    "env": "a variable name of letters, digits and underscores, such as TEAM_API_KEY",
}


def _unknown_field_message(path: tuple[str | int, ...], document: LocatedDocument) -> str:
    name = str(path[-1]) if path else "?"
    message = f"unknown field '{name}'"
    siblings = _known_fields(path[:-1], document)
    close = difflib.get_close_matches(name, siblings, n=1)
    if close:
        return f"{message}; did you mean '{close[0]}'?"
    return f"{message}; remove it or check the manifest reference in README.md"


def _known_fields(parent: tuple[str | int, ...], document: LocatedDocument) -> list[str]:
    from . import manifest as models

    model: Any = models.Manifest
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = _model_in(annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> Any:
    from pydantic import BaseModel

    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _bound_message(kind: str, value: Any, context: dict[str, Any]) -> str:
    words = {
        "greater_than": ("more than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    phrase, key = words[kind]
    return f"invalid value {_describe(value)}; use a number {phrase} {context.get(key)}"


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)
