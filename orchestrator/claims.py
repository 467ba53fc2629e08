"""Claims: the glob patterns of the output tree that an agent may write, matched and compared exactly.

A pattern is a relative POSIX path whose segments are globs. Within one segment
`*` matches any run of characters, `?` matches one character, and `[abc]`,
`[a-z]` and `[!a-z]` match one character of a class. A `]` right after `[` or
`[!` is a member of the class, and a `[` without a closing `]` is a literal.
There is no escape character, so write `[*]` for a literal star.

A segment that is exactly `**` matches zero or more whole segments, so `**/x.md`
matches both `x.md` and `a/b/x.md`. At the end of a pattern it matches one or
more, because `docs/**` claims every file below docs but not a file named docs.

Matching is case-sensitive, and `*` matches a leading dot like any other
character, because these are claims on paths and not shell expansion. A path
with an empty, `.` or `..` segment matches no claim. So two claims overlap only
when they share a path made of real file names: one or more segments, each
without `/` or NUL and none of them `.` or `..`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Claim", "Overlap", "claims_overlap", "find_overlaps"]

# A set of characters as sorted, disjoint, non-adjacent, inclusive code point ranges.
CharRanges = tuple[tuple[int, int], ...]

MAX_CODE_POINT = 0x10FFFF
DOT = ord(".")
# Every character a file name can contain: all code points except NUL and '/'.
NAME_CHARS: CharRanges = ((0x01, ord("/") - 1), (ord("/") + 1, MAX_CODE_POINT))
NOT_NAMES = frozenset({"", ".", ".."})


class Wildcard(enum.Enum):
    STAR = "*"
    GLOBSTAR = "**"


Token = CharRanges | Literal[Wildcard.STAR]


@dataclass(frozen=True)
class Segment:
    """One segment of a pattern, other than `**`, as tokens and as a compiled regex."""

    text: str
    tokens: tuple[Token, ...]
    # None when the segment has no wildcard, so a plain string comparison matches it.
    regex: re.Pattern[str] | None
    # Whether some file name matches the segment, which `[z-a]` and `[.]` never do.
    satisfiable: bool

    def matches(self, name: str) -> bool:
        if self.regex is None:
            return name == self.text
        return self.regex.fullmatch(name) is not None


Item = Segment | Literal[Wildcard.GLOBSTAR]


@dataclass(frozen=True)
class Claim:
    """A parsed claim pattern, built by `Claim.parse`."""

    pattern: str
    items: tuple[Item, ...] = field(repr=False, compare=False)
    # The items split at each `**`, so `matches` can place the fixed-length runs between them.
    chunks: tuple[tuple[Segment, ...], ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, pattern: str) -> Claim:
        """Parse and compile a pattern, or raise ValueError when it is not a valid claim."""
        check_pattern(pattern)

        items: list[Item] = []
        for text in pattern.split("/"):
            if text != "**":
                items.append(_parse_segment(text))
            elif not items or items[-1] is not Wildcard.GLOBSTAR:
                items.append(Wildcard.GLOBSTAR)

        # A trailing `**` needs one segment at least: `docs/**` reads as `docs/*/**`.
        if items[-1] is Wildcard.GLOBSTAR:
            items.insert(-1, _parse_segment("*"))

        chunks: list[tuple[Segment, ...]] = [()]
        for item in items:
            if item is Wildcard.GLOBSTAR:
                chunks.append(())
            else:
                chunks[-1] += (item,)
        return cls(pattern, tuple(items), tuple(chunks))

    def matches(self, path: str) -> bool:
        """Return whether a relative POSIX path such as `api/index.md` matches this claim."""
        names = path.split("/")
        if any(name in NOT_NAMES for name in names):
            return False

        if len(self.chunks) == 1:
            return len(names) == len(self.chunks[0]) and _chunk_matches_at(self.chunks[0], names, 0)

        head, *middle, tail = self.chunks
        end = len(names) - len(tail)
        if end < len(head) or not _chunk_matches_at(head, names, 0) or not _chunk_matches_at(tail, names, end):
            return False

        # Each run between two `**` goes at its leftmost fit, which leaves the most room for the runs after it.
        start = len(head)
        for chunk in middle:
            found = _find_chunk(chunk, names, start, end)
            if found is None:
                return False
            start = found + len(chunk)
        return True

    def overlaps(self, other: Claim) -> bool:
        """Return whether some path matches both claims."""
        first, second = self.items[0], other.items[0]
        # Claims of disjoint folders, the usual case, differ in a literal first name: no automaton needed.
        if isinstance(first, Segment) and isinstance(second, Segment) and first.regex is None \
                and second.regex is None and first.text != second.text:
            return False
        return _items_overlap(self.items, other.items)


@dataclass(frozen=True)
class Overlap:
    """Two claims of different agents that some path matches, where `first_agent` comes earlier in the mapping."""

    first_agent: str
    first_pattern: str
    second_agent: str
    second_pattern: str


def claims_overlap(first: str, second: str) -> bool:
    """Decide whether some path matches both patterns, or raise ValueError for an invalid pattern."""
    return Claim.parse(first).overlaps(Claim.parse(second))


def find_overlaps(claims: Mapping[str, Sequence[str]], shared: Collection[str]) -> list[Overlap]:
    """Find every pair of overlapping claims of two different agents, outside the shared paths.

    `claims` maps an agent name to its patterns. A pair is allowed, and left out,
    when either pattern is exactly one of the `shared` patterns. Pairs come in
    the order of the mapping, then of each agent's patterns, and a pattern that
    an agent lists twice counts once. Raise ValueError for an invalid pattern.
    """
    parsed: dict[str, Claim] = {}
    agents = [(agent, list(dict.fromkeys(patterns))) for agent, patterns in claims.items()]
    for _, patterns in agents:
        for pattern in patterns:
            if pattern not in parsed:
                parsed[pattern] = Claim.parse(pattern)

    allowed = set(shared)
    overlaps: list[Overlap] = []
    for index, (first_agent, first_patterns) in enumerate(agents):
        for second_agent, second_patterns in agents[index + 1 :]:
            for first_pattern in first_patterns:
                for second_pattern in second_patterns:
                    if first_pattern in allowed or second_pattern in allowed:
                        continue
                    if parsed[first_pattern].overlaps(parsed[second_pattern]):
                        overlaps.append(Overlap(first_agent, first_pattern, second_agent, second_pattern))
    return overlaps


def check_pattern(pattern: str, *, noun: str = "claim") -> None:
    """Raise ValueError, with the fix, unless `pattern` is a relative POSIX pattern inside the output tree.

    The manifest validates `writes` and `shared` paths with this function too, naming them "glob".
    """
    if not pattern.strip():
        raise ValueError(f"invalid {noun} {pattern!r}; use a relative pattern such as docs/**")
    if any(ord(char) < 32 or ord(char) == 127 for char in pattern):
        raise ValueError(f"invalid {noun} {pattern!r}; remove the control characters")
    if pattern.startswith("/") or "\\" in pattern:
        raise ValueError(f"invalid {noun} '{pattern}'; use a relative path with / such as docs/**")

    segments = pattern.split("/")
    if any(segment in NOT_NAMES for segment in segments):
        raise ValueError(
            f"invalid {noun} '{pattern}'; empty, '.' and '..' segments are not allowed, "
            "write a plain relative pattern such as docs/**"
        )
    if any("**" in segment and segment != "**" for segment in segments):
        raise ValueError(f"invalid {noun} '{pattern}'; '**' must be a whole segment, as in docs/**/x")


def _parse_segment(text: str) -> Segment:
    tokens = tuple(_tokenize(text))
    regex = None
    if any(char in text for char in "*?["):
        regex = re.compile("".join(_token_regex(token) for token in tokens), re.DOTALL)
    return Segment(text, tokens, regex, satisfiable=_tokens_overlap(tokens, tokens))


def _tokenize(text: str) -> Iterator[Token]:
    position = 0
    while position < len(text):
        char = text[position]
        token: Token
        if char == "*":
            token = Wildcard.STAR
            position += 1
        elif char == "?":
            token = NAME_CHARS
            position += 1
        elif char == "[" and (parsed := _parse_class(text, position)) is not None:
            token, position = parsed
        else:
            token = _intersect(((ord(char), ord(char)),), NAME_CHARS)
            position += 1
        yield token


def _parse_class(text: str, start: int) -> tuple[CharRanges, int] | None:
    """Parse the class that opens at `text[start]` into its characters and the index after it.

    Return None when the class has no closing `]`, so the `[` is a literal.
    """
    body_start = start + 1
    negated = text.startswith("!", body_start)
    if negated:
        body_start += 1

    # A `]` first in the class is a member, so the search for the closing `]` starts after it.
    close = text.find("]", body_start + 1 if text.startswith("]", body_start) else body_start)
    if close == -1:
        return None

    body = text[body_start:close]
    members: list[tuple[int, int]] = []
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            # A reversed range such as `z-a` contains no character.
            low, high = ord(body[index]), ord(body[index + 2])
            if low <= high:
                members.append((low, high))
            index += 3
        else:
            members.append((ord(body[index]), ord(body[index])))
            index += 1

    ranges = _intersect(_merge(members), NAME_CHARS)
    if negated:
        ranges = _intersect(_complement(ranges), NAME_CHARS)
    return ranges, close + 1


def _token_regex(token: Token) -> str:
    if token is Wildcard.STAR:
        return ".*"
    if not token:
        return "(?!)"
    parts = [f"\\U{low:08x}" if low == high else f"\\U{low:08x}-\\U{high:08x}" for low, high in token]
    return "[" + "".join(parts) + "]"


def _merge(ranges: list[tuple[int, int]]) -> CharRanges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _intersect(first: CharRanges, second: CharRanges) -> CharRanges:
    result: list[tuple[int, int]] = []
    i = j = 0
    while i < len(first) and j < len(second):
        low = max(first[i][0], second[j][0])
        high = min(first[i][1], second[j][1])
        if low <= high:
            result.append((low, high))

        # Drop the range that ends first, because it cannot meet any later range of the other set.
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return tuple(result)


def _complement(ranges: CharRanges) -> CharRanges:
    gaps: list[tuple[int, int]] = []
    next_free = 0
    for low, high in ranges:
        if low > next_free:
            gaps.append((next_free, low - 1))
        next_free = high + 1
    if next_free <= MAX_CODE_POINT:
        gaps.append((next_free, MAX_CODE_POINT))
    return tuple(gaps)


# States of the text read so far while two segments are compared, to rule out names that are not files.
EMPTY, ONE_DOT, TWO_DOTS, NAME = range(4)


def _next_states(state: int, chars: CharRanges) -> list[int]:
    """Return the states reachable from `state` by reading one character of `chars`."""
    if not chars:
        return []
    if state in (NAME, TWO_DOTS):
        return [NAME]

    states = []
    if any(low <= DOT <= high for low, high in chars):
        states.append(state + 1)
    if chars != ((DOT, DOT),):
        states.append(NAME)
    return states


def _tokens_overlap(a: tuple[Token, ...], b: tuple[Token, ...]) -> bool:
    """Decide whether some file name matches both token sequences.

    This is reachability in the product of the two token automata. `can_finish[i][j][state]`
    is True when the tokens `a[i:]` and `b[j:]` both match some string that makes a file name
    when appended to text read so far in `state`. Every move raises i, j or the state, except
    a read by two stars in the NAME state, which leads back to the same cell and so is skipped.
    That leaves no cycles, and filling the table from the end backwards decides it exactly.
    """
    can_finish = [[[False] * 4 for _ in range(len(b) + 1)] for _ in range(len(a) + 1)]
    can_finish[len(a)][len(b)][NAME] = True

    for i in reversed(range(len(a) + 1)):
        for j in reversed(range(len(b) + 1)):
            if i == len(a) and j == len(b):
                continue
            x = a[i] if i < len(a) else None
            y = b[j] if j < len(b) else None
            read = _read_move(x, y, i, j)

            for state in reversed(range(4)):
                reachable = (x is Wildcard.STAR and can_finish[i + 1][j][state]) or (
                    y is Wildcard.STAR and can_finish[i][j + 1][state]
                )
                if not reachable and read is not None:
                    to_i, to_j, chars = read
                    reachable = any(
                        can_finish[to_i][to_j][after]
                        for after in _next_states(state, chars)
                        if (to_i, to_j, after) != (i, j, state)
                    )
                can_finish[i][j][state] = reachable

    return can_finish[0][0][EMPTY]


def _read_move(x: Token | None, y: Token | None, i: int, j: int) -> tuple[int, int, CharRanges] | None:
    """Return the cell after reading one character at `(i, j)` and the characters both tokens accept there."""
    if x is None or y is None:
        return None
    if x is Wildcard.STAR:
        return (i, j, NAME_CHARS) if y is Wildcard.STAR else (i, j + 1, y)
    if y is Wildcard.STAR:
        return (i + 1, j, x)
    return (i + 1, j + 1, _intersect(x, y))


def _items_overlap(first: tuple[Item, ...], second: tuple[Item, ...]) -> bool:
    """Decide whether some path matches both item sequences, like `_tokens_overlap` one level up.

    `can_finish[i][j]` is True when `first[i:]` and `second[j:]` both match some run of
    segments. A `**` may match nothing, or take one segment that the other side's segment
    matches. Two `**` taking one segment together lead back to the same cell, so that move is skipped.
    """
    can_finish = [[False] * (len(second) + 1) for _ in range(len(first) + 1)]
    can_finish[len(first)][len(second)] = True

    for i in reversed(range(len(first) + 1)):
        for j in reversed(range(len(second) + 1)):
            if i == len(first) and j == len(second):
                continue
            x = first[i] if i < len(first) else None
            y = second[j] if j < len(second) else None

            reachable = False
            if x is Wildcard.GLOBSTAR:
                reachable = can_finish[i + 1][j] or (isinstance(y, Segment) and y.satisfiable and can_finish[i][j + 1])
            if y is Wildcard.GLOBSTAR and not reachable:
                reachable = can_finish[i][j + 1] or (isinstance(x, Segment) and x.satisfiable and can_finish[i + 1][j])
            if isinstance(x, Segment) and isinstance(y, Segment):
                reachable = can_finish[i + 1][j + 1] and _tokens_overlap(x.tokens, y.tokens)
            can_finish[i][j] = reachable

    return can_finish[0][0]


def _chunk_matches_at(chunk: tuple[Segment, ...], names: list[str], start: int) -> bool:
    return all(segment.matches(name) for segment, name in zip(chunk, names[start : start + len(chunk)], strict=True))


def _find_chunk(chunk: tuple[Segment, ...], names: list[str], start: int, end: int) -> int | None:
    """Return the first index from `start` where `chunk` matches and ends by `end`, or None."""
    for position in range(start, end - len(chunk) + 1):
        if _chunk_matches_at(chunk, names, position):
            return position
    return None
