"""The development stack's exception."""

from __future__ import annotations

from moderator.errors import ModeratorError


class DevStackError(ModeratorError):
    """A development server could not start or stop, or was used before start()."""
