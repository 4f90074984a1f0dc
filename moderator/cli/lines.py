"""Failures as the command line shows them: one line for people, passwords masked, controls
escaped."""

from __future__ import annotations

from moderator.errors import ModeratorError
from moderator.masking import mask_passwords
from moderator.text import safe_line


def error_line(exc: BaseException, limit: int = 2000) -> str:
    """An exception as one line of text for people, URL passwords masked. Our own errors are
    shown as they are; anything else is an unexpected error, named by its type. Line breaks
    read as spaces; any other control character (an ESC from an object key) as an escape."""
    text = safe_line(" ".join(str(exc).split()))
    if not isinstance(exc, ModeratorError):
        text = f"unexpected error: {type(exc).__name__}" + (f": {text}" if text else "")
        if _fenced(exc):  # librdkafka's error, wherever it came from: say what it means
            from moderator.ingest.checkpoint import FENCED_HINT

            text += f": {FENCED_HINT}"
    text = mask_passwords(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fenced(exc: BaseException) -> bool:
    """A confluent_kafka error saying a newer producer with this transactional id fenced ours
    (read by its name, without importing the client)."""
    error = exc.args[0] if exc.args else None
    name = getattr(error, "name", None)
    return callable(name) and name() in ("_FENCED", "PRODUCER_FENCED")
