"""Claims: which paths a pattern matches, and whether two patterns share a path.

Besides the tables, property tests compare the module with a reference written
here. Patterns come from a small alphabet of tokens. The reference translates a
pattern to one regex over the whole path, and a brute-force search over every
path of up to 3 segments of up to 3 characters from {a, b, c} looks for a path
that two patterns both match. Patterns without `**` are also compared segment by
segment over every name of up to 6 characters, which decides their overlap exactly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from orchestrator.claims import Claim, Overlap, claims_overlap, find_overlaps

MATCH_CASES = [
    # Literal segments.
    ("api/orchestrator.cli.md", "api/orchestrator.cli.md", True),
    ("api/orchestrator.cli.md", "api/orchestrator.cli.mdx", False),
    ("README.md", "readme.md", False),
    ("a/b", "a", False),
    ("a", "a/b", False),
    # `*` and `?` stay within one segment.
    ("*.md", "index.md", True),
    ("*.md", "docs/index.md", False),
    ("docs/*", "docs/x/y", False),
    ("docs/*", "docs/x", True),
    ("*", ".env", True),
    ("*", ".git", True),
    (".*", ".git", True),
    ("a*b", "ab", True),
    ("a*b", "axxb", True),
    ("a*b", "axxc", False),
    ("?.md", "a.md", True),
    ("?.md", "ab.md", False),
    ("?", "é", True),
    ("?", "😀", True),
    # Character classes.
    ("[abc].md", "b.md", True),
    ("[abc].md", "d.md", False),
    ("[a-z]x", "qx", True),
    ("[a-z]x", "Qx", False),
    ("[!a-z]x", "Qx", True),
    ("[!a-z]x", "qx", False),
    ("[]a]", "]", True),
    ("[!]a]", "]", False),
    ("[!]a]", "b", True),
    ("[a-]", "-", True),
    ("[z-a]", "z", False),
    ("[", "[", True),
    ("a[b", "a[b", True),
    ("[*]", "*", True),
    ("[*]", "x", False),
    ("[α-ω]", "β", True),
    # `**` as a whole segment.
    ("docs/**", "docs/a.md", True),
    ("docs/**", "docs/x/y.md", True),
    ("docs/**", "docs", False),
    ("docs/**", "documents/a.md", False),
    ("**/x.md", "x.md", True),
    ("**/x.md", "a/b/x.md", True),
    ("**/x.md", "a/b/y.md", False),
    ("x/**/y", "x/y", True),
    ("x/**/y", "x/a/b/y", True),
    ("x/**/y", "x/a/b/z", False),
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("**/**", "a", True),
    ("a/**/b/**/c", "a/b/c", True),
    ("a/**/b/**/c", "a/x/b/y/z/c", True),
    ("a/**/b/**/c", "a/c/b", False),
    ("a/**/b/c", "a/b/c/b/c", True),
    ("**/*.json", "reports/2024/report.json", True),
    # Paths that are not normalized match nothing.
    ("**", "", False),
    ("**", "a//b", False),
    ("**", "a/", False),
    ("**", "./a", False),
    ("**", "a/../b", False),
    ("*", "..", False),
    ("?", ".", False),
]

OVERLAP_CASES = [
    ("api/**", "api/index.md", True),
    ("*.md", "*.txt", False),
    ("a*", "*b", True),
    ("docs/*", "docs/x/y", False),
    ("**", "a/b/c", True),
    ("**", "*", True),
    ("[a-c]x", "[!a-c]x", False),
    ("**/report.json", "test-gaps/**", True),
    ("x/**/y", "x/y", True),
    ("docs/**", "docs", False),
    ("docs/**", "docs/**", True),
    ("docs/**", "src/**", False),
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/*", "*/b", True),
    ("*/*", "a", False),
    ("**/a/**", "**/b/**", True),
    ("a*b*c", "*c*a*", True),
    ("a*", "b*", False),
    ("*a", "*b", False),
    ("a?c", "?b?", True),
    ("??", "???", False),
    ("?*", "a", True),
    ("[abc]", "[cde]", True),
    ("[ab]", "[cd]", False),
    ("[!a-y]", "[x-z]", True),
    ("[!a-z]", "[b-y]", False),
    ("[!!-\U0010ffff]", "[ ]", True),
    ("[!!-\U0010ffff]", "[a-z]", False),
    ("[\udc80-\udcff]", "?", True),
    ("[!\U00010000-\U0010ffff]", "😀", False),
    ("[z-a]", "*", False),
    ("[z-a]/**", "**", False),
    ("README*", "readme*", False),
    # The only common names would be '.' or '..', which are not file names.
    ("[.]", "?", False),
    ("[.][.]", "??", False),
    ("..*", "[.][.]", False),
    ("[.]*", "*", True),
    ("*.", "[.].", False),
    ("*.", "...", True),
    ("a/**/b", "a/*/*/b", True),
    ("a/**/b/**/c", "**/c/b", False),
    ("a/**/b/**/c", "**/c/b/**", True),
    ("a/**/b/**/c", "**/b/c/**/c", True),
]

INVALID_PATTERNS = ["", " ", "/abs", "a//b", "docs/", "./a", "a/../b", "a/**b", "***", "a\\b", "a\x01b"]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCH_CASES)
def test_claim_matches(pattern: str, path: str, expected: bool) -> None:
    assert Claim.parse(pattern).matches(path) is expected


@pytest.mark.parametrize(("first", "second", "expected"), OVERLAP_CASES)
def test_claims_overlap(first: str, second: str, expected: bool) -> None:
    assert claims_overlap(first, second) is expected


@pytest.mark.parametrize(("first", "second", "expected"), OVERLAP_CASES)
def test_overlap_is_symmetric(first: str, second: str, expected: bool) -> None:
    assert claims_overlap(second, first) is expected


@pytest.mark.parametrize("pattern", INVALID_PATTERNS)
def test_parse_rejects_invalid_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid claim"):
        Claim.parse(pattern)


def test_claims_compare_by_pattern() -> None:
    assert Claim.parse("docs/**") == Claim.parse("docs/**")
    assert Claim.parse("docs/**") != Claim.parse("docs/*")
    assert len({Claim.parse("a"), Claim.parse("a")}) == 1


def test_globstars_match_deep_path() -> None:
    claim = Claim.parse("**/a/**/a/**/b")
    deep = "/".join(["a"] * 200)

    assert claim.matches(deep + "/b")
    assert not claim.matches(deep)


# Tokens of the generated patterns, with the regex of each in the reference translation.
TOKEN_REGEX = {"a": "a", "b": "b", "*": "[^/]*", "?": "[^/]", "[ab]": "[ab]", "[!a]": "[^/a]"}

Structure = list[list[str] | None]  # Each segment is a list of tokens, or None for `**`.

token_segments = st.lists(st.sampled_from(sorted(TOKEN_REGEX)), min_size=1, max_size=3).filter(
    lambda tokens: all(pair != ("*", "*") for pair in itertools.pairwise(tokens))
)
structures = st.lists(st.one_of(st.none(), token_segments), min_size=1, max_size=3)


def pattern_text(structure: Sequence[list[str] | None]) -> str:
    return "/".join("**" if segment is None else "".join(segment) for segment in structure)


def reference_regex(structure: Sequence[list[str] | None]) -> re.Pattern[str]:
    """Translate a pattern to one regex over the path with a '/' in front of each segment."""
    parts = []
    for index, segment in enumerate(structure):
        if segment is not None:
            parts.append("/" + "".join(TOKEN_REGEX[token] for token in segment))
        elif index == len(structure) - 1:
            parts.append("(?:/[^/]+)+")
        else:
            parts.append("(?:/[^/]+)*")
    return re.compile("".join(parts))


NAMES = ["".join(chars) for length in (1, 2, 3) for chars in itertools.product("abc", repeat=length)]
BOUNDED_PATHS = ["/".join(names) for depth in (1, 2, 3) for names in itertools.product(NAMES, repeat=depth)]


@settings(max_examples=500)
@given(structure=structures, path=st.sampled_from(BOUNDED_PATHS))
def test_matches_agrees_with_reference(structure: Structure, path: str) -> None:
    expected = reference_regex(structure).fullmatch("/" + path) is not None

    assert Claim.parse(pattern_text(structure)).matches(path) is expected


@settings(max_examples=300, deadline=None)
@given(first=structures, second=structures)
def test_overlap_agrees_with_brute_force(first: Structure, second: Structure) -> None:
    first_regex, second_regex = reference_regex(first), reference_regex(second)
    common = next(
        (path for path in BOUNDED_PATHS if first_regex.fullmatch("/" + path) and second_regex.fullmatch("/" + path)),
        None,
    )
    overlap = claims_overlap(pattern_text(first), pattern_text(second))

    assert claims_overlap(pattern_text(second), pattern_text(first)) is overlap
    # Only this direction is sound: a common path may need more segments or characters than the search tries.
    if common is not None:
        assert overlap, f"both match {common}"
    event("overlap" if overlap else "disjoint")
    event("common path found" if common is not None else "no common path in bounded space")


# Two segments of at most 3 tokens each that share a name share one of at most 6 characters from
# {a, b, c}. Each character read by a token other than `*` advances that token, and a character that
# two stars read together can be dropped, so the shortest common name has at most one character per
# such token. Any character class of the alphabet, alone or intersected with another, that is not
# empty contains a, b or c.
LONG_NAMES = ["".join(chars) for length in range(1, 7) for chars in itertools.product("abc", repeat=length)]


def segments_share_name(first: list[str], second: list[str]) -> bool:
    first_regex = re.compile("".join(TOKEN_REGEX[token] for token in first))
    second_regex = re.compile("".join(TOKEN_REGEX[token] for token in second))
    return any(first_regex.fullmatch(name) and second_regex.fullmatch(name) for name in LONG_NAMES)


@settings(max_examples=300, deadline=None)
@given(
    first=st.lists(token_segments, min_size=1, max_size=3),
    second=st.lists(token_segments, min_size=1, max_size=3),
)
def test_overlap_without_globstar_is_exact(first: list[list[str]], second: list[list[str]]) -> None:
    # Without `**` a path matches only a pattern of its own depth, segment by segment.
    expected = len(first) == len(second) and all(
        segments_share_name(first_segment, second_segment)
        for first_segment, second_segment in zip(first, second, strict=True)
    )

    assert claims_overlap(pattern_text(first), pattern_text(second)) is expected


def test_find_overlaps_reports_pair() -> None:
    claims = {"writer": ["docs/**"], "indexer": ["docs/index.md"]}

    assert find_overlaps(claims, shared=[]) == [Overlap("writer", "docs/**", "indexer", "docs/index.md")]


def test_find_overlaps_skips_disjoint_claims() -> None:
    claims = {"writer": ["docs/**", "*.md"], "tester": ["tests/**", "*.txt"]}

    assert find_overlaps(claims, shared=[]) == []


def test_find_overlaps_skips_same_agent() -> None:
    claims = {"writer": ["docs/**", "docs/index.md"], "tester": ["tests/**"]}

    assert find_overlaps(claims, shared=[]) == []


def test_shared_path_allows_overlap() -> None:
    claims = {"writer": ["CHANGELOG.md", "docs/**"], "tester": ["CHANGELOG.md", "tests/**"]}

    assert find_overlaps(claims, shared={"CHANGELOG.md"}) == []


def test_shared_pattern_on_one_side_allows_overlap() -> None:
    claims = {"writer": ["notes/**"], "tester": ["notes/tests.md"]}

    assert find_overlaps(claims, shared=["notes/**"]) == []


def test_shared_path_must_match_exactly() -> None:
    claims = {"writer": ["docs/**"], "indexer": ["docs/*.md"]}

    overlaps = find_overlaps(claims, shared=["docs/index.md"])

    assert overlaps == [Overlap("writer", "docs/**", "indexer", "docs/*.md")]


def test_find_overlaps_order_follows_input() -> None:
    claims = {
        "writer": ["docs/**", "report.json"],
        "tester": ["**/report.json", "docs/tests.md"],
        "indexer": ["docs/index.md"],
    }

    overlaps = find_overlaps(claims, shared=[])

    assert overlaps == [
        Overlap("writer", "docs/**", "tester", "**/report.json"),
        Overlap("writer", "docs/**", "tester", "docs/tests.md"),
        Overlap("writer", "report.json", "tester", "**/report.json"),
        Overlap("writer", "docs/**", "indexer", "docs/index.md"),
    ]
    assert find_overlaps(claims, shared=[]) == overlaps


def test_duplicate_pattern_reported_once() -> None:
    claims = {"writer": ["docs/**", "docs/**"], "indexer": ["docs/index.md"]}

    assert len(find_overlaps(claims, shared=[])) == 1


def test_find_overlaps_rejects_invalid_pattern() -> None:
    with pytest.raises(ValueError, match="a/../b"):
        find_overlaps({"writer": ["a/../b"], "tester": ["b"]}, shared=[])
