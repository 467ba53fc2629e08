#!/usr/bin/env python3
"""Write a Markdown API reference for a Python package, read with `ast` only.

Produces `<out>/api/index.md`, a table of the modules with the first line of
each module docstring. Each module also gets `<out>/api/<dotted.module>.md`
with its docstring and its public classes and functions. A class entry shows
its bases, constructor, annotated attributes and public methods. A function or
method entry shows its signature as written in the source and its docstring.
Public means no leading underscore, but a module-level `__all__` given as a
literal list or tuple decides which top-level names are public. The package is
parsed, never imported.

Exit status: 0 on success, 1 if an output file cannot be written, 2 on invalid
arguments or a missing package directory.
"""
from __future__ import annotations

import argparse
import ast
import os
import stat
import sys

SKIPPED_DIR_NAMES = {"__pycache__"}
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
PARSE_ERRORS = (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError)


def find_sources(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Return the sorted .py files under root and the (path, reason) entries skipped.

    Symlinks inside root are never followed, so nothing outside root is read.
    Hidden and __pycache__ directories are not entered.
    """
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            skipped.append((directory, f"unreadable directory: {error.strerror}"))
            continue
        for entry in entries:
            if entry.is_symlink():
                skipped.append((entry.path, "symlink, not followed"))
            elif entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and entry.name not in SKIPPED_DIR_NAMES:
                    pending.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and entry.name.endswith(".py"):
                files.append(entry.path)
    return sorted(files), sorted(skipped)


def read_bytes(path: str) -> bytes:
    """Read a file without following a symlink at path.

    Raises OSError if path is a symlink or not a regular file. O_NONBLOCK keeps
    a FIFO from blocking the open call.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"not a regular file: {path}")
        return handle.read()


def module_name(root: str, path: str) -> str:
    """Return the dotted module name of path, with root's directory name as the package.

    NOTE: `x.py` and `x/__init__.py` side by side both map to `x`, so the later
    one in sorted order overwrites the page of the earlier one.
    """
    parts = os.path.relpath(path, root).split(os.sep)
    parts[-1] = parts[-1][: -len(".py")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([os.path.basename(os.path.abspath(root))] + parts)


def display_path(path: str, parent: str) -> str:
    return os.path.relpath(path, parent).replace(os.sep, "/")


def literal_all(tree: ast.Module) -> list[str] | None:
    """Return the names in a literal `__all__`, extended by any literal `+=`.

    Returns None if `__all__` is absent or computed, so the underscore rule applies.
    """
    names: list[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            continue
        if not isinstance(value, (ast.List, ast.Tuple)):
            return None
        found = [item.value for item in value.elts
                 if isinstance(item, ast.Constant) and isinstance(item.value, str)]
        if len(found) != len(value.elts):
            return None
        if isinstance(node, ast.AugAssign):
            names = None if names is None else names + found
        else:
            names = found
    return names


def is_public(name: str, exported: list[str] | None) -> bool:
    return name in exported if exported is not None else not name.startswith("_")


def render_argument(argument: ast.arg, default: ast.expr | None) -> str:
    text = argument.arg
    if argument.annotation is not None:
        text += f": {ast.unparse(argument.annotation)}"
    if default is not None:
        separator = " = " if argument.annotation is not None else "="
        text += separator + ast.unparse(default)
    return text


def render_arguments(arguments: ast.arguments) -> str:
    """Render a parameter list, including the `/` and `*` markers."""
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    parts: list[str] = []
    for index, (argument, default) in enumerate(zip(positional, defaults, strict=True)):
        parts.append(render_argument(argument, default))
        if index == len(arguments.posonlyargs) - 1:
            parts.append("/")
    if arguments.vararg is not None:
        parts.append("*" + render_argument(arguments.vararg, None))
    elif arguments.kwonlyargs:
        parts.append("*")
    for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        parts.append(render_argument(argument, default))
    if arguments.kwarg is not None:
        parts.append("**" + render_argument(arguments.kwarg, None))
    return ", ".join(parts)


def render_decorators(node: FunctionNode | ast.ClassDef) -> str:
    return "".join(f"@{ast.unparse(item)}\n" for item in node.decorator_list)


def render_signature(node: FunctionNode) -> str:
    keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{render_decorators(node)}{keyword} {node.name}({render_arguments(node.args)}){returns}"


def render_docstring(node: FunctionNode | ast.ClassDef) -> str:
    return ast.get_docstring(node) or "_No docstring._"


def render_function(node: FunctionNode, heading: str, title: str) -> list[str]:
    code = ["```python", render_signature(node), "```"]
    return [f"{heading} `{title}`", "", *code, "", render_docstring(node), ""]


def render_class(node: ast.ClassDef) -> list[str]:
    """Render a class header, constructor, public annotated attributes and public methods."""
    bases = [ast.unparse(item) for item in node.bases + node.keywords]
    header = f"class {node.name}({', '.join(bases)})" if bases else f"class {node.name}"
    code = [f"{render_decorators(node)}{header}:"]
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            if not item.target.id.startswith("_"):
                default = f" = {ast.unparse(item.value)}" if item.value is not None else ""
                code.append(f"    {item.target.id}: {ast.unparse(item.annotation)}{default}")
        elif isinstance(item, FUNCTION_NODES) and item.name == "__init__":
            code.append("    " + render_signature(item).replace("\n", "\n    "))
    lines = [f"### `class {node.name}`", "", "```python", *code, "```", ""]
    lines += [render_docstring(node), ""]
    for item in node.body:
        if isinstance(item, FUNCTION_NODES) and not item.name.startswith("_"):
            lines += render_function(item, "####", f"{node.name}.{item.name}")
    return lines


def render_module_page(module: str, source: str, tree: ast.Module | None, error: str | None) -> str:
    lines = [f"# `{module}`", "", f"Source: `{source}`", ""]
    if tree is None:
        return "\n".join(lines + [f"**Not documented, parsing failed:** {error}", ""])
    lines += [ast.get_docstring(tree) or "_No module docstring._", ""]
    exported = literal_all(tree)
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node for node in tree.body if isinstance(node, FUNCTION_NODES)]
    classes = [node for node in classes if is_public(node.name, exported)]
    functions = [node for node in functions if is_public(node.name, exported)]
    if classes:
        lines += ["## Classes", ""]
        for class_node in classes:
            lines += render_class(class_node)
    if functions:
        lines += ["## Functions", ""]
        for function_node in functions:
            lines += render_function(function_node, "###", function_node.name)
    return "\n".join(lines).rstrip("\n") + "\n"


def summarize(tree: ast.Module | None, error: str | None) -> str:
    """Return the first line of the module docstring, or the parse error."""
    if tree is None:
        return f"**Parsing failed:** {error}"
    docstring = ast.get_docstring(tree)
    return docstring.split("\n")[0] if docstring else "_No module docstring._"


def render_index(package: str, rows: list[tuple[str, str]], skipped: list[tuple[str, str]]) -> str:
    lines = [f"# API reference: `{package}`", "", f"{len(rows)} modules.", ""]
    lines += ["| Module | Summary |", "| --- | --- |"]
    for module, summary in rows:
        cell = summary.replace("|", "\\|").strip()
        lines.append(f"| [`{module}`](<{module}.md>) | {cell} |")
    if skipped:
        lines += ["", "## Skipped paths", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in skipped]
    return "\n".join(lines) + "\n"


def describe_error(error: Exception) -> str:
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{type(error).__name__} at line {error.lineno}: {error.msg}"
    return f"{type(error).__name__}: {error}"


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def remove_stale_pages(api_dir: str, written: set[str]) -> None:
    """Delete .md files left in api_dir by an earlier run on a package that had more modules."""
    for name in sorted(os.listdir(api_dir)):
        if name.endswith(".md") and name not in written:
            os.unlink(os.path.join(api_dir, name))


def build_reference(root: str, out_dir: str) -> tuple[int, int, int]:
    """Write the index and module pages, and return (modules, failed, skipped) counts."""
    files, skipped = find_sources(root)
    parent = os.path.dirname(os.path.abspath(root))
    api_dir = os.path.join(out_dir, "api")
    os.makedirs(api_dir, exist_ok=True)
    rows: list[tuple[str, str]] = []
    failed = 0
    for path in files:
        module, source = module_name(root, path), display_path(path, parent)
        tree, error = None, None
        try:
            # Parsing bytes lets ast apply the encoding declaration and report
            # undecodable bytes as a SyntaxError with a line number.
            tree = ast.parse(read_bytes(path), filename=source)
        except PARSE_ERRORS as caught:
            error = describe_error(caught)
            failed += 1
        rows.append((module, summarize(tree, error)))
        page = render_module_page(module, source, tree, error)
        write_text(os.path.join(api_dir, f"{module}.md"), page)
    skipped_rows = [(display_path(path, parent), reason) for path, reason in skipped]
    package = os.path.basename(os.path.abspath(root))
    write_text(os.path.join(api_dir, "index.md"), render_index(package, rows, skipped_rows))
    remove_stale_pages(api_dir, {"index.md"} | {f"{module}.md" for module, _ in rows})
    return len(rows), failed, len(skipped)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a Markdown API reference for a Python package.")
    parser.add_argument("--package", default="/workspace/src/orchestrator",
                        help="package directory to document (default: %(default)s)")
    parser.add_argument("--out", default="/workspace/output",
                        help="output directory; pages go to its api/ subdirectory "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def write_summary_section(out: str, title: str, text: str) -> None:
    """Write this agent's section of the shared SUMMARY.md, which the publisher appends for every agent."""
    with open(os.path.join(out, "SUMMARY.md"), "w", encoding="utf-8") as handle:
        handle.write(f"## {title}\n\n{text}\n\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(args.package):
        reason = "is not a directory" if os.path.exists(args.package) else "directory not found"
        print(f"error: --package {reason}: {args.package}", file=sys.stderr)
        return 2
    try:
        modules, failed, skipped = build_reference(args.package, args.out)
    except OSError as error:
        print(f"error: failed to write output under {args.out}: {error}", file=sys.stderr)
        return 1
    summary = (f"wrote {modules} module pages and api/index.md "
               f"({failed} failed to parse, {skipped} paths skipped)")
    write_summary_section(args.out, "API reference", summary)
    print(f"api_reference: {summary} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
