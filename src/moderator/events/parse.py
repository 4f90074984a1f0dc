"""Turn one `uploads` message value into zero or more UploadEvents, or a parse failure."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from moderator.events.s3notify import (
    NotificationError,
    TenantRule,
    events_from_notification,
    is_notification,
)
from moderator.events.upload import UploadEvent

MAX_MESSAGE_BYTES = 1 << 20


class MalformedMessage(ValueError):
    """The message is not a valid UploadEvent nor an S3 notification: it goes to the DLQ."""


@dataclass(frozen=True)
class Parsed:
    events: list[UploadEvent]
    skipped_records: int = 0


def parse_message(value: bytes | None, rule: TenantRule) -> Parsed:
    """Parse a message value; raise MalformedMessage with a one-line reason."""
    if value is None:
        raise MalformedMessage("message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message value is {len(value)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from exc
    if is_notification(doc):
        try:
            events, skipped = events_from_notification(doc, rule)
        except NotificationError as exc:
            raise MalformedMessage(f"S3 notification: {exc}") from exc
        return Parsed(events, skipped)
    try:
        return Parsed([UploadEvent.model_validate(doc)])
    except ValidationError as exc:
        raise MalformedMessage(_first_error(exc)) from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"UploadEvent {where}: {err['msg']}{more}"
