"""Load a YAML document into plain Python values and remember the line of every field.

PyYAML's safe loader drops positions once it has built Python objects, so this
module walks the composed node tree itself. Each value's path (a tuple such as
`("agents", 1, "resources", "memory")`) maps to its 1-based line, which lets a
validation error point at the exact line of the manifest.

The walk also rejects what a manifest never needs and an attacker might use:
duplicate keys (the second silently wins in plain YAML), non-string keys, and
alias expansion past a node budget (the "billion laughs" document).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64
_DEFAULT_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


class YamlProblem(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(message)


@dataclass
class LocatedDocument:
    """A parsed document and the 1-based line of every value in it."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Return the line of `path`, or of its closest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def load(text: str) -> LocatedDocument:
    """Parse one YAML document; raise YamlProblem with a line for any problem."""
    if len(text.encode("utf-8", errors="replace")) > MAX_DOCUMENT_BYTES:
        raise YamlProblem(None, f"file is larger than {MAX_DOCUMENT_BYTES} bytes")

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.composer.ComposerError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        if "expected a single document" in str(exc.context):
            raise YamlProblem(line, "the file contains more than one YAML document; keep only the first") from exc
        raise YamlProblem(line, f"invalid YAML: {exc.problem}") from exc
    except RecursionError as exc:
        raise YamlProblem(None, f"the document is nested more than {MAX_DEPTH} levels deep; flatten it") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlProblem(
            line, f"invalid YAML: {exc.problem or exc.context}; check the indentation and quoting on this line"
        ) from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(None, f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()

    document = LocatedDocument(data=None)
    if root is None:
        return document
    walker = _Walker(loader, document)
    document.data = walker.build(root, ())
    return document


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, document: LocatedDocument) -> None:
        self._loader = loader
        self._document = document
        self._visited = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self._visited += 1
        if self._visited > MAX_NODES:
            raise YamlProblem(
                node.start_mark.line + 1,
                f"document expands to more than {MAX_NODES} values (aliases?); "
                "write the manifest without deeply nested aliases",
            )
        self._document.lines.setdefault(path, node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:
            raise YamlProblem(node.start_mark.line + 1, f"the document is nested more than {MAX_DEPTH} levels deep")
        default_tag = _DEFAULT_TAGS.get(type(node))
        if default_tag is not None and node.tag != default_tag:
            raise YamlProblem(node.start_mark.line + 1, f"unsupported tag '{_short_tag(node.tag)}'; remove the tag")

        if isinstance(node, yaml.MappingNode):
            return self._build_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        return self._build_scalar(node)

    def _build_mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        # Merge keys (<<) would hide where a value came from; a manifest has no need for them.
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(line, "merge keys (<<) are not supported; write the fields out")
            key = self._build_scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise YamlProblem(line, f"key {key_node.value!r} is not a string; quote it")
            if key in result:
                raise YamlProblem(line, f"duplicate key '{key}'; keep one of them")
            self._document.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result

    def _build_scalar(self, node: yaml.Node) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            message = f"invalid value: unsupported tag '{_short_tag(node.tag)}'; remove the tag"
            if not node.tag.startswith("tag:yaml.org,2002:python/"):
                message = f"invalid value: {exc.problem}"
            raise YamlProblem(node.start_mark.line + 1, message) from exc
        except yaml.YAMLError as exc:
            raise YamlProblem(node.start_mark.line + 1, f"invalid value: {exc}") from exc
        except (ValueError, OverflowError) as exc:
            # A date such as 2024-13-45, or an integer too long to convert.
            excerpt = str(node.value)[:40]
            raise YamlProblem(node.start_mark.line + 1, f"invalid value {excerpt!r}: {exc}; quote it") from exc


def _short_tag(tag: str) -> str:
    """Write a standard YAML tag the way it appears in a file: !!python/object, not its full URI."""
    return tag.replace("tag:yaml.org,2002:", "!!")
