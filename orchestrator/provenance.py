"""Provenance queries: who published a file of the output tree, and when, read from its ledger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputError
from .publish import state_folder
from .publish.ledger import read_records


def relative_output_path(output: Path, path: str) -> str:
    """Turn PATH (relative to the output tree, or absolute inside it) into the ledger's relative form."""
    candidate = Path(path)
    if candidate.is_absolute():
        resolved_output = Path(os.path.realpath(output))
        resolved = Path(os.path.normpath(candidate))
        if resolved_output not in resolved.parents:
            raise InputError(f"{path} is not inside the output tree {output}; pass --output with the right tree")
        return resolved.relative_to(resolved_output).as_posix()
    normal = os.path.normpath(path)
    if normal.startswith("..") or normal == ".":
        raise InputError(f"invalid path '{path}'; give a file path inside the output tree, such as SUMMARY.md")
    return Path(normal).as_posix()


def history(output: Path, path: str) -> list[dict[str, Any]]:
    """Return every ledger record of one published path, oldest first."""
    if not state_folder(output).is_dir():
        raise InputError(f"{output} has no ledger ({state_folder(output)} is missing); pass --output with a tree "
                         "that orchestrate published into")
    relative = relative_output_path(output, path)
    return [record for record in read_records(state_folder(output)) if record.get("path") == relative]
