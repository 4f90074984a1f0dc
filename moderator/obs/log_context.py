"""The context of the event being processed, on every log line written while it is.

One context variable holds the event's fields (tenant, event id, input coordinates, trace id):
setting it is one call, where binding each field as a structlog context variable costs a
variable per field on the way in and again on the way out, twice per event (the fetch worker
and the engine window's thread both log for the event). `merge_event_context` is the
processor that puts the fields on a line; a field the line sets itself wins.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

_EVENT: ContextVar[Mapping[str, Any] | None] = ContextVar("moderator_event_log", default=None)


class EventLogContext:
    """`with EventLogContext(fields):` the fields are on every log line of this thread (or
    task) until the block ends; blocks nest, the inner one's fields replacing the outer's."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, Any] | None] | None = None

    def __enter__(self) -> None:
        self._token = _EVENT.set(self._fields)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _EVENT.reset(self._token)
            self._token = None


def merge_event_context(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current event's fields, where the line has none of its own."""
    fields = _EVENT.get()
    if fields:
        for name, value in fields.items():
            event_dict.setdefault(name, value)
    return event_dict
