"""Failures as the command line shows them: one line for people, passwords masked."""

from __future__ import annotations

from moderator.errors import ModeratorError
from moderator.masking import mask_passwords


def error_line(exc: BaseException, limit: int = 2000) -> str:
    """An exception as one line of text for people, URL passwords masked. Our own errors are
    shown as they are; anything else is an unexpected error, named by its type."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, ModeratorError):
        text = f"unexpected error: {type(exc).__name__}" + (f": {text}" if text else "")
    text = mask_passwords(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
