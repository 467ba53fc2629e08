"""Symlink resolution inside a workspace, component by component, as the kernel would do it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.symlinks import link_escapes, reader_under

LINKS = {"d/s": ".", "d/up": "..", "loop": "loop", "abs": "/workspace/output/d", "out": "/etc"}


def fake_readlink(path: str) -> str | None:
    return LINKS.get(path)


@pytest.mark.parametrize(
    ("parts", "target", "escapes"),
    [
        (("d",), "x", False),
        (("d",), "../x", False),
        (("d",), "../../x", True),
        (("d",), "s/s/s/../x", False),
        # Text alone says inside; with s -> . each s is the folder itself, so the '..' climb out.
        (("d",), "s/s/s/../../../../etc/shadow", True),
        (("d",), "up/x", False),
        (("d",), "up/../x", True),
        ((), "loop", True),
        ((), "/workspace/output/d/x", False),
        ((), "/workspace/output/../output/x", True),
        ((), "/workspace/output/d/s/s/../../..", True),
        ((), "abs/s/x", False),
        ((), "out/x", True),
        ((), "/workspace/src/secret", True),
    ],
)
def test_resolution(parts: tuple[str, ...], target: str, escapes: bool) -> None:
    assert link_escapes(parts, target, fake_readlink) is escapes


def test_reader_never_follows_a_link_on_the_way(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "real").mkdir(parents=True)
    os.symlink("target", root / "real" / "link")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink("planted", outside / "link")
    os.symlink(str(outside), root / "via")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        readlink = reader_under(fd)
        assert readlink("real/link") == "target"
        assert readlink("real") is None
        # "via" is a link, so the reader does not go through it to the outside folder's link.
        assert readlink("via/link") is None
    finally:
        os.close(fd)
