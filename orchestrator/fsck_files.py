"""Check the files whose content `git fsck` judges before a snapshot records them in the user's repository.

`git fsck` reads every `.gitmodules` and `.gitattributes` blob that a tree names and rejects some contents. It
rejects a submodule named `../x` or with a URL that starts with `-`, since both were used to run code on
clone, and newer releases also reject very large attributes files or very long lines in them. One such blob
in any tree, reachable or not, makes `git fsck` of the whole repository fail, and servers that check pushes
reject it. So a snapshot asks git's own fsck about each such file an agent changed, in a throwaway
repository, before recording it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from .copy_tree import folded_name
from .host_git import git

# Files of these names larger than this are not recorded, since real ones are a few kilobytes.
MAX_CHECKED_SIZE = 1 << 20
CHECKED_NAMES = (".gitmodules", ".gitattributes")
# The 8.3 short names NTFS may give `.gitmodules`, which git's fsck treats as `.gitmodules` too.
NTFS_GITMODULES = re.compile(r"gitmod~[0-9]")


def checked_name(name: str) -> str | None:
    """Return the name git's fsck reads a file named `name` as (".gitmodules" or ".gitattributes"), or None."""
    folded = folded_name(name)
    if folded in CHECKED_NAMES:
        return folded
    if NTFS_GITMODULES.fullmatch(folded):
        return ".gitmodules"
    return None


def fsck_problem(name: str, data: bytes) -> str | None:
    """Return git fsck's error for a tree holding `data` as the file `name` (from `checked_name`), or None."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-fsck-") as folder:
        store = Path(folder) / "check.git"
        git(None, "init", "--quiet", "--bare", "--template=", str(store))
        blob = git(store, "hash-object", "-w", "--stdin", input_data=data).stdout.decode().strip()
        git(store, "mktree", input_data=f"100644 blob {blob}\t{name}\n".encode())
        completed = git(store, "fsck", "--strict", "--no-dangling", "--no-progress", check=False)
    if completed.returncode == 0:
        return None
    lines = completed.stderr.decode(errors="replace").splitlines()
    return "; ".join(line for line in lines if line.startswith("error")) or f"git fsck exit {completed.returncode}"
