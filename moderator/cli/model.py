"""`moderator model ...`: checkpoint tools. `make-tiny` writes a random-weight smoke-test model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from moderator.errors import ConfigError
from moderator.paths import directory_problem

TRANSFORMERS_MISSING = (
    "make-tiny needs the transformers extra (torch, transformers): "
    "pip install 'moderator[transformers]'"
)


def cmd_make_tiny(directory: Path, arch: str, seed: int) -> int:
    """Write a tiny checkpoint of `arch` to `directory`; print its path and a warning."""
    _check_directory(directory)
    try:
        import torch  # noqa: F401  # probe only: make_tiny imports what it needs itself
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(TRANSFORMERS_MISSING) from exc
    from moderator.dev.tiny.checkpoint import make_tiny

    _create(directory)
    path = make_tiny(directory, arch, seed=seed)
    print(path)
    print(
        f"moderator: warning: {arch} checkpoint with random weights (seed {seed}): "
        "for smoke tests only, its verdicts are meaningless",
        file=sys.stderr,
    )
    return 0


def _check_directory(directory: Path) -> None:
    """DIRECTORY is a directory or can be created as one: ConfigError (exit 2) now, not an
    OSError after the model was built."""
    problem = directory_problem(directory)
    if problem is not None:
        raise ConfigError(f"make-tiny: DIRECTORY: {problem}")


def _create(directory: Path) -> None:
    """Create DIRECTORY (and its parents) before the model is built: ConfigError naming it
    when that is not allowed (a read-only or system folder)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"make-tiny: DIRECTORY: cannot create {directory}: {reason}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"make-tiny: DIRECTORY: cannot write to {directory}: permission denied")
