"""Whether a path can be the directory or the file a command writes to, checked before the work
starts."""

from __future__ import annotations

import os
from pathlib import Path


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot be used as a directory to write in, as words starting with the path:
    `P exists and is not a directory`, or `cannot create P: Q is not a directory` / `... is not
    writable` for the nearest existing folder Q above it; None when it is a directory or can be
    created as one."""
    for found in (path, *path.parents):
        if not found.exists() and not found.is_symlink():
            continue
        if found == path:
            return None if found.is_dir() else f"{path} exists and is not a directory"
        if not found.is_dir():
            return f"cannot create {path}: {found} is not a directory"
        if not os.access(found, os.W_OK | os.X_OK):
            return f"cannot create {path}: {found} is not writable"
        return None
    return None


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be written as a file, worded as `directory_problem` words it; None when
    it can. Its folder must exist already: a mistyped folder is not created."""
    if path.is_dir():
        return f"{path} is a directory"
    folder = path.parent
    if not folder.exists():
        return f"cannot create {path}: {folder} does not exist"
    if not folder.is_dir():
        return f"cannot create {path}: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {path}: {folder} is not writable"
    return None
