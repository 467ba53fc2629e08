#!/usr/bin/env python3
"""List the public callables of a package that no test file names.

Produces `<out>/test-gaps/report.md` and `<out>/test-gaps/report.json`. The
public callables, found with `ast`, are the public module-level functions and
the public methods of public classes, where public means no leading
underscore. A callable counts as named when its name (the method name, for a
method) occurs in a test file as a variable name, an attribute, an imported
name or a string constant made of dotted identifiers, as in
`mock.patch("pkg.mod.func")`. Definitions in test files do not count, because
a fake that defines `run` does not call the real one. Being named is a hint,
not proof, that a test exercises the callable.

Test files are `test_*.py`, `*_test.py` and `conftest.py` under the tests
directory. A missing tests directory means no tests. Exit status: 0 on success,
1 if an output file cannot be written, 2 on invalid arguments or a missing
package directory.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

SKIPPED_DIR_NAMES = {"__pycache__"}
PARSE_ERRORS = (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError)
Record = dict[str, Any]  # one JSON object of the report


def find_files(root: str, matches: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """Return the sorted files under root for which matches(name) is true, and the symlinks skipped.

    Symlinks inside root are never followed, so nothing outside root is read.
    Hidden and __pycache__ directories are not entered, and unreadable ones are ignored.
    """
    files: list[str] = []
    symlinks: list[str] = []
    pending = [root]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                symlinks.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and entry.name not in SKIPPED_DIR_NAMES:
                    pending.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and matches(entry.name):
                files.append(entry.path)
    return sorted(files), sorted(symlinks)


def is_test_file(name: str) -> bool:
    if not name.endswith(".py"):
        return False
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def parse_file(path: str, display: str) -> ast.Module:
    """Parse a file without following a symlink at path. Raises one of PARSE_ERRORS."""
    # O_NONBLOCK keeps a FIFO from blocking the open call.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"not a regular file: {path}")
        data = handle.read()
    # Parsing bytes lets ast apply the encoding declaration and report
    # undecodable bytes as a SyntaxError with a line number.
    return ast.parse(data, filename=display)


def describe_error(error: Exception) -> str:
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{type(error).__name__} at line {error.lineno}: {error.msg}"
    return f"{type(error).__name__}: {error}"


def display_path(path: str, parent: str) -> str:
    return os.path.relpath(path, parent).replace(os.sep, "/")


def module_name(root: str, path: str) -> str:
    """Return the dotted module name of path, with root's directory name as the package."""
    parts = os.path.relpath(path, root).split(os.sep)
    parts[-1] = parts[-1][: -len(".py")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([os.path.basename(os.path.abspath(root))] + parts)


def public_callables(tree: ast.Module) -> list[tuple[str, str, int]]:
    """Return (qualified name, name to look for, line) for each public function and method.

    A name defined twice, as with `@overload` or a property setter, is listed once.
    """
    found: dict[str, tuple[str, str, int]] = {}
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and not node.name.startswith("_"):
            found.setdefault(node.name, (node.name, node.name, node.lineno))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, functions) and not item.name.startswith("_"):
                    qualified = f"{node.name}.{item.name}"
                    found.setdefault(qualified, (qualified, item.name, item.lineno))
    return list(found.values())


def identifier_parts(text: str) -> list[str]:
    """Return the parts of a string such as "run" or "pkg.mod.run", or [] for other strings."""
    parts = text.split(".")
    return parts if all(part.isidentifier() for part in parts) else []


def used_identifiers(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.update(node.name.split("."))
            if node.asname:
                names.add(node.asname)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(identifier_parts(node.value))
    return names


def scan_tests(
    tests: str, parent: str
) -> tuple[list[str], set[str], list[Record], list[str]]:
    """Return the test files, the identifiers they use, their parse errors and skipped symlinks."""
    if not os.path.isdir(tests):
        return [], set(), [], []
    files, symlinks = find_files(tests, is_test_file)
    names: set[str] = set()
    errors: list[Record] = []
    for path in files:
        display = display_path(path, parent)
        try:
            names |= used_identifiers(parse_file(path, display))
        except PARSE_ERRORS as error:
            errors.append({"file": display, "error": describe_error(error)})
    test_paths = [display_path(path, parent) for path in files]
    skipped = [display_path(path, parent) for path in symlinks]
    return test_paths, names, errors, skipped


def scan_package(package: str) -> tuple[list[Record], list[Record], list[str]]:
    """Return every public callable, the package parse errors and the symlinks skipped."""
    parent = os.path.dirname(os.path.abspath(package))
    files, symlinks = find_files(package, lambda name: name.endswith(".py"))
    callables: list[Record] = []
    errors: list[Record] = []
    for path in files:
        display = display_path(path, parent)
        try:
            tree = parse_file(path, display)
        except PARSE_ERRORS as error:
            errors.append({"file": display, "error": describe_error(error)})
            continue
        module = module_name(package, path)
        for qualified, lookup, line in public_callables(tree):
            callables.append({"module": module, "name": qualified, "file": display,
                              "line": line, "lookup": lookup})
    skipped = [display_path(path, parent) for path in symlinks]
    return callables, errors, skipped


def build_report(package: str, tests: str) -> Record:
    callables, package_errors, skipped = scan_package(package)
    test_parent = os.path.dirname(os.path.abspath(tests))
    test_files, names, test_errors, test_skipped = scan_tests(tests, test_parent)
    untested = [{key: item[key] for key in ("module", "name", "file", "line")}
                for item in callables if item["lookup"] not in names]
    untested.sort(key=lambda item: (item["module"], item["line"], item["name"]))
    return {"package": package, "tests": tests, "tests_found": os.path.isdir(tests),
            "test_files": test_files, "public": len(callables), "untested": untested,
            "parse_errors": package_errors + test_errors,
            "skipped_symlinks": skipped + test_skipped}


def render_markdown(report: Record) -> str:
    public, untested = report["public"], len(report["untested"])
    package = os.path.basename(os.path.abspath(report["package"]))
    lines = [f"# Test gaps: `{package}`", "", f"- Package: `{report['package']}`",
             f"- Tests: `{report['tests']}` ({len(report['test_files'])} test files)", ""]
    if not report["tests_found"]:
        lines += ["**No tests:** the tests directory was not found, so every public "
                  "callable is listed as untested.", ""]
    lines += [f"**{untested} of {public} public callables are not named in any test.**", "",
              "A callable counts as named when its name (the method name, for a method) occurs "
              "in a test file as a name, an attribute, an import or an identifier-like string. "
              "Being named does not prove that a test exercises it."]
    current_module = None
    for item in report["untested"]:
        if item["module"] != current_module:
            current_module = item["module"]
            lines += ["", f"## `{current_module}`", ""]
        lines.append(f"- `{item['name']}` at `{item['file']}:{item['line']}`")
    if report["parse_errors"]:
        lines += ["", "## Files that failed to parse", ""]
        lines += [f"- `{item['file']}`: {item['error']}" for item in report["parse_errors"]]
    if report["skipped_symlinks"]:
        lines += ["", "## Symlinks not followed", ""]
        lines += [f"- `{path}`" for path in report["skipped_symlinks"]]
    return "\n".join(lines) + "\n"


def write_reports(report: Record, out_dir: str) -> None:
    report_dir = os.path.join(out_dir, "test-gaps")
    os.makedirs(report_dir, exist_ok=True)
    json_path = os.path.join(report_dir, "report.json")
    with open(json_path, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
        handle.write("\n")
    markdown_path = os.path.join(report_dir, "report.md")
    with open(markdown_path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(render_markdown(report))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="List public callables that no test file names.")
    parser.add_argument("--package", default="/workspace/src/orchestrator",
                        help="package directory to scan (default: %(default)s)")
    parser.add_argument("--tests", default="/workspace/src/tests",
                        help="tests directory, searched recursively; a missing one means no "
                             "tests (default: %(default)s)")
    parser.add_argument("--out", default="/workspace/output",
                        help="output directory; reports go to its test-gaps/ subdirectory "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def check_directory(option: str, path: str, required: bool) -> str | None:
    """Return an error message if path is unusable as the directory for option."""
    if os.path.isdir(path) or (not required and not os.path.exists(path)):
        return None
    reason = "is not a directory" if os.path.exists(path) else "directory not found"
    return f"error: {option} {reason}: {path}"


def write_summary_section(out: str, title: str, text: str) -> None:
    """Write this agent's section of the shared SUMMARY.md, which the publisher appends for every agent."""
    with open(os.path.join(out, "SUMMARY.md"), "w", encoding="utf-8") as handle:
        handle.write(f"## {title}\n\n{text}\n\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    message = (check_directory("--package", args.package, required=True)
               or check_directory("--tests", args.tests, required=False))
    if message:
        print(message, file=sys.stderr)
        return 2
    report = build_report(args.package, args.tests)
    try:
        write_reports(report, args.out)
    except OSError as error:
        print(f"error: failed to write output under {args.out}: {error}", file=sys.stderr)
        return 1
    report_dir = os.path.join(args.out, "test-gaps")
    summary = (f"{len(report['untested'])} of {report['public']} public callables not named "
               f"in {len(report['test_files'])} test files")
    write_summary_section(args.out, "Test gaps", summary + "; details in test-gaps/report.md")
    print(f"test_gaps: {summary}; report in {report_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
