"""Run the example agents in agents/examples on a small package built in tmp_path.

Each script runs as a subprocess, as it does in the sandbox container, but
without Docker. The package includes a file with a syntax error, a file that is
not valid UTF-8 and symlinks that point outside the package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "agents" / "examples"
SCRIPTS = ["api_reference.py", "test_gaps.py", "static_check.py"]
Report = dict[str, Any]

CORE = '''\
"""Core runner | with a pipe.

More detail that the index leaves out.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Runner settings."""

    image: str
    timeout: float = 30.0
    _token: str = ""


class Runner:
    """Runs commands."""

    def __init__(self, config: Config, /, name="r", *args, verbose: bool = False, **kwargs) -> None:
        self.config = config

    async def run(self, command: list[str], *, timeout: float | None = None) -> int:
        """Run a command and return its exit code."""
        return 0

    def _private_step(self):
        pass


async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
    """Fetch a URL."""
    return b""


def _hidden_helper():
    pass


def branchy(items, flag):
    total = 0
    if flag and items:
        total += 1
    elif flag or not items or total:
        total -= 1
    for item in items:
        while item > 0:
            item -= 1
    try:
        total += sum(x for x in items if x if x > 1)
    except ValueError:
        pass
    except TypeError:
        pass
    with open(__file__) as handle:
        assert handle
    match flag:
        case True:
            pass
        case _:
            pass

    def inner():
        if total:
            pass
    return total
'''

EXPORTED = '''\
__all__ = ["kept", "_special"]


def kept():
    """Kept by __all__."""


def dropped():
    pass


def _special(a, b=2, /, c=3):
    pass
'''

# 5 lines: 3 code lines, 1 comment, 1 blank. The syntax error is on line 3.
BROKEN = "x = 1\n# comment\ndef broken(:\n\n    pass\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """Build tmp_path/pkg, with a symlinked file and directory pointing to tmp_path/outside."""
    root = tmp_path / "pkg"
    write(root / "__init__.py", '"""Scratch package for the example agents."""\n')
    write(root / "core.py", CORE)
    write(root / "exported.py", EXPORTED)
    write(root / "broken.py", BROKEN)
    (root / "undecodable.py").write_bytes(b"a = 1\nb = '\xff'\n")
    write(root / "sub" / "deep.py", '"""Deep module."""\n\n\ndef deep():\n    pass\n')
    outside = write(tmp_path / "outside" / "secret.py", "def leaked_secret():\n    pass\n")
    (root / "link.py").symlink_to(outside)
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    return root


@pytest.fixture
def tests_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tests"
    write(root / "unit" / "test_core.py", """\
        from unittest import mock

        from pkg.core import Runner


        def test_run():
            with mock.patch("pkg.core.fetch"):
                Runner(None).run([])
        """)
    write(root / "conftest.py", "from pkg.exported import kept\n")
    write(root / "helpers.py", "from pkg.core import branchy\n")
    write(root / "broken_test.py", "def test_broken(:\n")
    outside = write(tmp_path / "outside" / "test_outside.py", "from pkg.sub.deep import deep\n")
    (root / "test_link.py").symlink_to(outside)
    return root


def run_script(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(EXAMPLES / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def all_output_text(root: Path) -> str:
    return "\n".join(data.decode("utf-8") for data in read_tree(root).values())


@pytest.fixture
def api_out(package: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    result = run_script("api_reference.py", "--package", package, "--out", out, cwd=out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    return out / "api"


def test_api_reference_writes_page_per_module(api_out: Path) -> None:
    pages = sorted(path.name for path in api_out.iterdir())
    assert pages == ["index.md", "pkg.broken.md", "pkg.core.md", "pkg.exported.md", "pkg.md",
                     "pkg.sub.deep.md", "pkg.undecodable.md"]


def test_api_reference_renders_signature(api_out: Path) -> None:
    page = (api_out / "pkg.core.md").read_text(encoding="utf-8")
    assert "async def fetch(url: str, *, timeout: float = 1.0) -> bytes" in page
    assert "async def run(self, command: list[str], *, timeout: float | None = None) -> int" in page
    assert ("def __init__(self, config: Config, /, name='r', *args, verbose: bool = False, "
            "**kwargs) -> None") in page
    assert "@dataclass(frozen=True)\nclass Config:" in page
    assert "    timeout: float = 30.0" in page
    assert "Run a command and return its exit code." in page


def test_api_reference_hides_private_names(api_out: Path) -> None:
    page = (api_out / "pkg.core.md").read_text(encoding="utf-8")
    assert "_private_step" not in page
    assert "_hidden_helper" not in page
    assert "_token" not in page


def test_api_reference_honours_literal_dunder_all(api_out: Path) -> None:
    page = (api_out / "pkg.exported.md").read_text(encoding="utf-8")
    assert "def kept()" in page
    assert "def _special(a, b=2, /, c=3)" in page
    assert "dropped" not in page


def test_api_reference_index_lists_summaries(api_out: Path) -> None:
    index = (api_out / "index.md").read_text(encoding="utf-8")
    assert "| [`pkg.core`](<pkg.core.md>) | Core runner \\| with a pipe. |" in index
    assert "| [`pkg.sub.deep`](<pkg.sub.deep.md>) | Deep module. |" in index
    assert "More detail" not in index


def test_api_reference_records_parse_failures(api_out: Path) -> None:
    index = (api_out / "index.md").read_text(encoding="utf-8")
    broken_page = (api_out / "pkg.broken.md").read_text(encoding="utf-8")
    undecodable_page = (api_out / "pkg.undecodable.md").read_text(encoding="utf-8")
    assert "SyntaxError at line 3" in broken_page
    assert "SyntaxError at line 3" in index
    assert "SyntaxError at line 2" in undecodable_page
    assert "decode" in undecodable_page


def test_api_reference_does_not_follow_symlinks(api_out: Path) -> None:
    index = (api_out / "index.md").read_text(encoding="utf-8")
    assert "leaked_secret" not in all_output_text(api_out)
    assert "- `pkg/link.py`: symlink, not followed" in index
    assert "- `pkg/linked_dir`: symlink, not followed" in index


def test_api_reference_output_is_deterministic(
    package: Path, api_out: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second"
    result = run_script("api_reference.py", "--package", package, "--out", second, cwd=second)
    assert result.returncode == 0, result.stderr
    assert read_tree(second / "api") == read_tree(api_out)


def test_api_reference_removes_stale_pages(package: Path, api_out: Path) -> None:
    (api_out / "pkg.removed.md").write_text("old page\n", encoding="utf-8")
    out = api_out.parent
    result = run_script("api_reference.py", "--package", package, "--out", out, cwd=out)
    assert result.returncode == 0, result.stderr
    assert not (api_out / "pkg.removed.md").exists()


@pytest.fixture
def gaps_report(package: Path, tests_dir: Path, tmp_path: Path) -> Report:
    out = tmp_path / "out"
    result = run_script("test_gaps.py", "--package", package, "--tests", tests_dir,
                        "--out", out, cwd=out)
    assert result.returncode == 0, result.stderr
    report: Report = json.loads((out / "test-gaps" / "report.json").read_text(encoding="utf-8"))
    return report


def test_test_gaps_lists_unnamed_callables(gaps_report: Report) -> None:
    untested = [(item["module"], item["name"], item["line"]) for item in gaps_report["untested"]]
    assert gaps_report["public"] == 6
    assert untested == [("pkg.core", "branchy", 40), ("pkg.exported", "dropped", 8),
                        ("pkg.sub.deep", "deep", 4)]


def test_test_gaps_counts_strings_imports_and_conftest(gaps_report: Report) -> None:
    names = {item["name"] for item in gaps_report["untested"]}
    assert "fetch" not in names  # named only in mock.patch("pkg.core.fetch")
    assert "Runner.run" not in names  # named as an attribute
    assert "kept" not in names  # imported only in conftest.py


def test_test_gaps_ignores_helpers_and_symlinks(gaps_report: Report) -> None:
    names = {item["name"] for item in gaps_report["untested"]}
    assert "branchy" in names  # imported only by helpers.py, not a test file
    assert "deep" in names  # imported only through a symlink to a file outside tests/
    assert "tests/test_link.py" in gaps_report["skipped_symlinks"]
    assert "pkg/link.py" in gaps_report["skipped_symlinks"]
    assert "tests/test_link.py" not in gaps_report["test_files"]


def test_test_gaps_records_parse_failures(gaps_report: Report) -> None:
    errors = {item["file"]: item["error"] for item in gaps_report["parse_errors"]}
    assert sorted(errors) == ["pkg/broken.py", "pkg/undecodable.py", "tests/broken_test.py"]
    assert errors["pkg/broken.py"].startswith("SyntaxError at line 3")
    assert errors["tests/broken_test.py"].startswith("SyntaxError at line 1")


def test_test_gaps_markdown_lists_file_and_line(gaps_report: Report, tmp_path: Path) -> None:
    report = (tmp_path / "out" / "test-gaps" / "report.md").read_text(encoding="utf-8")
    assert "**3 of 6 public callables are not named in any test.**" in report
    assert "## `pkg.core`" in report
    assert "- `branchy` at `pkg/core.py:40`" in report
    assert "leaked_secret" not in report


def test_test_gaps_missing_tests_dir_means_no_tests(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_script("test_gaps.py", "--package", package, "--tests", tmp_path / "absent",
                        "--out", out, cwd=out)
    report = json.loads((out / "test-gaps" / "report.json").read_text(encoding="utf-8"))
    markdown = (out / "test-gaps" / "report.md").read_text(encoding="utf-8")
    assert result.returncode == 0, result.stderr
    assert report["tests_found"] is False
    assert len(report["untested"]) == report["public"] == 6
    assert "the tests directory was not found" in markdown


def test_test_gaps_output_is_deterministic(package: Path, tests_dir: Path, tmp_path: Path) -> None:
    trees = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = run_script("test_gaps.py", "--package", package, "--tests", tests_dir,
                            "--out", out, cwd=out)
        assert result.returncode == 0, result.stderr
        trees.append(read_tree(out))
    assert trees[0] == trees[1]


@pytest.fixture
def static_report(package: Path, tmp_path: Path) -> Report:
    write(package / "warns.py", 'same = "a" is "a"\n')
    out = tmp_path / "out"
    result = run_script("static_check.py", "--package", package, "--out", out, cwd=out)
    assert result.returncode == 0, result.stderr
    path = out / "static-check" / "report.json"
    report: Report = json.loads(path.read_text(encoding="utf-8"))
    return report


def file_entry(report: Report, path: str) -> Report:
    return next(item for item in report["files"] if item["path"] == path)


def test_static_check_computes_complexity(static_report: Report) -> None:
    core = file_entry(static_report, "pkg/core.py")
    functions = {item["name"]: item for item in core["functions"]}
    # 1 + if, and + elif, 2 x or + for + while + 2 comprehension ifs
    # + 2 excepts + with + assert + 2 cases; the nested function counts on its own.
    assert functions["branchy"]["complexity"] == 16
    assert functions["branchy.inner"]["complexity"] == 2
    assert functions["Runner.run"]["complexity"] == 1
    assert static_report["most_complex"][0]["name"] == "branchy"


def test_static_check_finds_longest_function(static_report: Report) -> None:
    core = file_entry(static_report, "pkg/core.py")
    assert core["longest_function"]["name"] == "branchy"
    assert core["longest_function"]["length"] == 27
    assert len(core["functions"]) == 7


def test_static_check_records_compile_failure(static_report: Report) -> None:
    broken = file_entry(static_report, "pkg/broken.py")
    undecodable = file_entry(static_report, "pkg/undecodable.py")
    assert broken["error"]["type"] == "SyntaxError"
    assert broken["error"]["line"] == 3
    assert broken["functions"] is None
    assert (broken["lines"], broken["code_lines"]) == (5, 3)
    assert undecodable["error"]["line"] == 2
    assert static_report["summary"]["failed"] == 2


def test_static_check_records_compile_warnings(static_report: Report) -> None:
    warnings = file_entry(static_report, "pkg/warns.py")["warnings"]
    assert [(item["line"], item["category"]) for item in warnings] == [(1, "SyntaxWarning")]


def test_static_check_markdown_has_sections(static_report: Report, tmp_path: Path) -> None:
    report = (tmp_path / "out" / "static-check" / "report.md").read_text(encoding="utf-8")
    assert "## Compile failures" in report
    assert "| `pkg/broken.py` | 3 | SyntaxError: invalid syntax |" in report
    assert "| `pkg/core.py` | " in report
    assert "## Most complex functions (top 10)" in report
    assert "| `branchy` | `pkg/core.py` | 40 | 27 | 16 |" in report


def test_static_check_does_not_follow_symlinks(static_report: Report, tmp_path: Path) -> None:
    paths = [item["path"] for item in static_report["files"]]
    skipped = [item["path"] for item in static_report["skipped"]]
    assert "pkg/link.py" not in paths
    assert skipped == ["pkg/link.py", "pkg/linked_dir"]
    assert "leaked_secret" not in all_output_text(tmp_path / "out")


def test_static_check_writes_no_bytecode(static_report: Report, package: Path) -> None:
    assert list(package.rglob("__pycache__")) == []
    assert list(package.rglob("*.pyc")) == []


def test_static_check_output_is_deterministic(package: Path, tmp_path: Path) -> None:
    trees = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = run_script("static_check.py", "--package", package, "--out", out, cwd=out)
        assert result.returncode == 0, result.stderr
        trees.append(read_tree(out))
    assert trees[0] == trees[1]


def test_static_check_empty_package_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    write(empty / "README.md", "no Python here\n")
    out = tmp_path / "out"
    result = run_script("static_check.py", "--package", empty, "--out", out, cwd=out)
    assert result.returncode == 1
    assert str(empty) in result.stderr
    assert not (out / "static-check").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_package_exits_2(script: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    result = run_script(script, "--package", missing, "--out", out, cwd=out)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --package directory not found: {missing}"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_exits_2(script: str, tmp_path: Path) -> None:
    result = run_script(script, "--no-such-option", cwd=tmp_path / "out")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
