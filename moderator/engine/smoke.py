"""The smoke-test marker: a checkpoint directory holding random weights says so in one file.

`moderator model make-tiny` writes the marker; engines that load a checkpoint read it and label
their verdicts as smoke-test output, which no decision should ever be taken from.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "moderator-tiny.json"
"""File that marks a directory as a smoke-test checkpoint with random weights."""


def is_smoke_test(directory: Path) -> bool:
    """True when `directory` holds a tiny random-weight checkpoint written by `make_tiny`."""
    return (Path(directory) / MARKER).is_file()
