#!/usr/bin/env python3
"""Compile every .py file of a package in memory and report size and complexity.

Produces `<out>/static-check/report.md` and `<out>/static-check/report.json`
with, per file: the compile error or warnings if any, lines, code lines
(neither blank nor starting with `#`), functions (nested ones and methods
included), the longest function and the cyclomatic complexity of each function.
Complexity is 1 plus one per if/elif, for, while, except handler, with,
assert, match case and comprehension `if`, plus one per boolean operand after
the first. A nested function or class body counts toward its own functions,
not the enclosing one. Sources are compiled in memory with `compile()` and
never imported, so no .pyc file is written and no package code runs.

Exit status: 0 on success, including when some files fail to compile, 1 if the
package contains no .py file or an output file cannot be written, 2 on invalid
arguments or a missing package directory.
"""
from __future__ import annotations

import argparse
import ast
import codecs
import json
import os
import stat
import sys
import warnings
from typing import Any

SKIPPED_DIR_NAMES = {"__pycache__"}
FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
BRANCH_NODES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler,
                ast.With, ast.AsyncWith, ast.Assert, ast.match_case)
TOP_COUNT = 10
Record = dict[str, Any]  # one JSON object of the report


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

    Raises OSError if path is a symlink or not a regular file.
    """
    # O_NONBLOCK keeps a FIFO from blocking the open call.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"not a regular file: {path}")
        return handle.read()


def count_lines(data: bytes) -> tuple[int, int]:
    """Return (lines, code lines). A code line is neither blank nor a comment."""
    lines = data.removeprefix(codecs.BOM_UTF8).splitlines()
    code = [line for line in lines if line.strip() and not line.lstrip().startswith(b"#")]
    return len(lines), len(code)


def compile_source(
    data: bytes, display: str
) -> tuple[ast.Module | None, Record | None, list[Record]]:
    """Compile data in memory and return (tree, error, warnings), with tree None on error."""
    tree, error = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compile(data, display, "exec", dont_inherit=True)
            tree = ast.parse(data, filename=display)
        except (SyntaxError, ValueError, RecursionError) as exception:
            line = getattr(exception, "lineno", None) or None
            message = getattr(exception, "msg", None) or str(exception)
            error = {"type": type(exception).__name__, "message": message, "line": line}
    # ast.parse repeats some warnings that compile already raised, so deduplicate.
    found = {(item.lineno, item.category.__name__, str(item.message)) for item in caught}
    return tree, error, [{"line": line, "category": category, "message": message}
                         for line, category, message in sorted(found)]


def complexity(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    score = 1
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (*FUNCTION_NODES, ast.ClassDef)):
            continue
        if isinstance(node, BRANCH_NODES):
            score += 1
        elif isinstance(node, ast.BoolOp):
            score += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            score += len(node.ifs)
        pending.extend(ast.iter_child_nodes(node))
    return score


def collect_functions(tree: ast.Module) -> list[Record]:
    """Return name, line, length in lines and complexity of every function, sorted by line.

    Names are qualified with enclosing classes and functions, as in `Runner.run.inner`.
    """
    functions: list[Record] = []
    pending: list[tuple[ast.AST, str]] = [(tree, "")]
    while pending:
        node, prefix = pending.pop()
        for child in ast.iter_child_nodes(node):
            child_prefix = prefix
            if isinstance(child, FUNCTION_NODES):
                name = prefix + child.name
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                functions.append({"name": name, "line": child.lineno, "length": length,
                                  "complexity": complexity(child)})
                child_prefix = name + "."
            elif isinstance(child, ast.ClassDef):
                child_prefix = prefix + child.name + "."
            pending.append((child, child_prefix))
    return sorted(functions, key=lambda item: (item["line"], item["name"]))


def analyse_file(path: str, display: str) -> Record:
    result: Record = {"path": display, "lines": None, "code_lines": None, "functions": None,
                    "longest_function": None, "max_complexity": None, "error": None,
                    "warnings": []}
    try:
        data = read_bytes(path)
    except OSError as exception:
        message = exception.strerror or str(exception)
        result["error"] = {"type": "OSError", "message": message, "line": None}
        return result
    result["lines"], result["code_lines"] = count_lines(data)
    tree, result["error"], result["warnings"] = compile_source(data, display)
    if tree is not None:
        functions = collect_functions(tree)
        result["functions"] = functions
        if functions:
            # Ties go to the function that starts first.
            longest = min(functions, key=lambda item: (-item["length"], item["line"]))
            result["longest_function"] = longest
            result["max_complexity"] = max(item["complexity"] for item in functions)
    return result


def build_report(package: str, files: list[str], skipped: list[tuple[str, str]]) -> Record:
    parent = os.path.dirname(os.path.abspath(package))

    def display(path: str) -> str:
        return os.path.relpath(path, parent).replace(os.sep, "/")

    results = [analyse_file(path, display(path)) for path in files]
    ranked = [dict(item, path=result["path"])
              for result in results for item in result["functions"] or []]
    ranked.sort(key=lambda item: (-item["complexity"], item["path"], item["line"], item["name"]))
    summary = {"files": len(results),
               "failed": sum(1 for result in results if result["error"]),
               "lines": sum(result["lines"] or 0 for result in results),
               "code_lines": sum(result["code_lines"] or 0 for result in results),
               "functions": sum(len(result["functions"] or []) for result in results)}
    return {"package": package, "summary": summary, "files": results,
            "most_complex": ranked[:TOP_COUNT],
            "skipped": [{"path": display(path), "reason": reason} for path, reason in skipped]}


def cell(value: object) -> str:
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def render_table(title: str, header: list[str], rows: list[list[object]]) -> list[str]:
    """Render a Markdown section with a table, right-aligning columns of integers."""
    numeric = []
    for index in range(len(header)):
        values = [row[index] for row in rows if row[index] is not None]
        numeric.append(bool(values) and all(isinstance(value, int) for value in values))
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if flag else "---" for flag in numeric) + " |")
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def file_row(result: Record) -> list[object]:
    longest = result["longest_function"]
    longest_text = None
    if longest:
        unit = "line" if longest["length"] == 1 else "lines"
        longest_text = f"`{longest['name']}` ({longest['length']} {unit})"
    count = None if result["functions"] is None else len(result["functions"])
    return [f"`{result['path']}`", result["lines"], result["code_lines"], count,
            longest_text, result["max_complexity"]]


def render_markdown(report: Record) -> str:
    summary = report["summary"]
    package = os.path.basename(os.path.abspath(report["package"]))
    lines = [f"# Static check: `{package}`", "", f"- Package: `{report['package']}`",
             f"- {summary['files']} files, {summary['failed']} failed to compile",
             f"- {summary['lines']} lines, {summary['code_lines']} code lines, "
             f"{summary['functions']} functions", "",
             "Complexity is 1 plus one per if/elif, for, while, except handler, with, assert, "
             "match case and comprehension `if`, plus one per boolean operand after the first."]
    failures = [[f"`{result['path']}`", result["error"]["line"],
                 f"{result['error']['type']}: {result['error']['message']}"]
                for result in report["files"] if result["error"]]
    if failures:
        lines += render_table("Compile failures", ["File", "Line", "Error"], failures)
    warned = [[f"`{result['path']}`", item["line"], f"{item['category']}: {item['message']}"]
              for result in report["files"] for item in result["warnings"]]
    if warned:
        lines += render_table("Compile warnings", ["File", "Line", "Warning"], warned)
    lines += render_table("Files", ["File", "Lines", "Code lines", "Functions",
                                    "Longest function", "Max complexity"],
                          [file_row(result) for result in report["files"]])
    ranked = [[f"`{item['name']}`", f"`{item['path']}`", item["line"], item["length"],
               item["complexity"]] for item in report["most_complex"]]
    lines += render_table(f"Most complex functions (top {TOP_COUNT})",
                          ["Function", "File", "Line", "Lines", "Complexity"], ranked)
    if report["skipped"]:
        lines += ["", "## Skipped paths", ""]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_reports(report: Record, out_dir: str) -> str:
    report_dir = os.path.join(out_dir, "static-check")
    os.makedirs(report_dir, exist_ok=True)
    json_path = os.path.join(report_dir, "report.json")
    with open(json_path, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
        handle.write("\n")
    markdown_path = os.path.join(report_dir, "report.md")
    with open(markdown_path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(render_markdown(report))
    return report_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compile a package in memory and report size and complexity.")
    parser.add_argument("--package", default="/workspace/src/orchestrator",
                        help="package directory to check (default: %(default)s)")
    parser.add_argument("--out", default="/workspace/output",
                        help="output directory; reports go to its static-check/ subdirectory "
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
    files, skipped = find_sources(args.package)
    if not files:
        print(f"error: no .py files found under {args.package}", file=sys.stderr)
        return 1
    report = build_report(args.package, files, skipped)
    try:
        report_dir = write_reports(report, args.out)
    except OSError as error:
        print(f"error: failed to write output under {args.out}: {error}", file=sys.stderr)
        return 1
    summary = report["summary"]
    text = (f"{summary['files']} files, {summary['failed']} failed to compile, "
            f"{summary['lines']} lines, {summary['functions']} functions")
    write_summary_section(args.out, "Static check", text + "; details in static-check/report.md")
    print(f"static_check: {text}; report in {report_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
