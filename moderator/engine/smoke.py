"""What a checkpoint directory says about itself: the smoke-test marker and the model card.

`moderator model make-tiny` writes the marker; engines that load a checkpoint read it and label
their verdicts as smoke-test output, which no decision should ever be taken from.
`moderator train merge` writes `moderator-model.json` beside a fine-tuned model's weights: the
name and revision its verdicts carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moderator.errors import ConfigError

MARKER = "moderator-tiny.json"
"""File that marks a directory as a smoke-test checkpoint with random weights."""

CARD = "moderator-model.json"
"""The machine-readable model card of a fine-tuned checkpoint (name, revision, provenance)."""


@dataclass(frozen=True)
class CardIdentity:
    """The name and revision a checkpoint's model card gives it (None: not stated)."""

    name: str | None = None
    revision: str | None = None


def is_smoke_test(directory: Path) -> bool:
    """True when `directory` holds a tiny random-weight checkpoint written by `make_tiny`."""
    return (Path(directory) / MARKER).is_file()


def card_identity(directory: Path) -> CardIdentity:
    """The `name` and `revision` of the directory's model card; empty when it has none.

    ConfigError (one line, naming the file) when the card is there but unreadable.
    """
    path = Path(directory) / CARD
    if not path.is_file():
        return CardIdentity()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"engine.model: {path}: not a readable JSON model card ({exc})") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"engine.model: {path}: not a model card (a JSON object)")
    return CardIdentity(_text(document.get("name")), _text(document.get("revision")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
