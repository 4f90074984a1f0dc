"""The dev stack's environment as a file a shell can source (`moderator dev-stack --env-file`).

The file appears at once, complete: it is written under a temporary name in the same folder and
renamed into place, so a shell waiting for it never reads half of it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path

from moderator.errors import ConfigError


def export_lines(env: Mapping[str, str]) -> list[str]:
    """One `export NAME=value` line per variable, values quoted for a POSIX shell."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def env_file_text(env: Mapping[str, str], pid: int) -> str:
    """The file's content: a comment naming the process, then the export lines."""
    head = f"# moderator dev-stack (pid {pid}): its environment; removed when it stops"
    return "\n".join([head, *export_lines(env)]) + "\n"


def check_env_file(path: Path) -> None:
    """`--env-file FILE` can be written once the stack is up: ConfigError (exit 2) before
    anything starts when its folder is missing or FILE is a folder."""
    if not path.parent.is_dir():
        raise ConfigError(f"dev-stack: --env-file: {path.parent} is not a folder")
    if path.is_dir():
        raise ConfigError(f"dev-stack: --env-file: {path} is a folder")


def write_env_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file in the same folder, then renamed)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_env_file(path: Path, text: str) -> None:
    """Remove `path` if it still holds `text` (another stack may have replaced it since)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            path.unlink()
    except OSError:
        pass
