"""Turn one `uploads` message value into zero or more UploadEvents, or a parse failure.

Every value ends as `Parsed` or as `MalformedMessage` with a one-line reason (the DLQ header).
A value must be I-JSON (RFC 7493) within fixed limits. They are checked before or while decoding,
so no input makes the decoder recurse or convert without bound, and so every accepted event can
later be written as canonical JSON in the audit trail:

- at most MAX_MESSAGE_BYTES bytes of UTF-8 (a leading byte order mark is tolerated);
- arrays and objects nested at most MAX_DEPTH deep;
- integers within +-(2**53 - 1), finite numbers only (no NaN or Infinity);
- no lone surrogates (`"\\ud800"`), no member name twice in one object;
- at most MAX_RECORDS records in an S3 notification (see `moderator.events.s3notify`).

A value is one of these shapes, tried in this order: an S3/MinIO bucket notification
(`Records`, or `s3:TestEvent`), an EventBridge event (`detail-type` and `source`), an SNS
envelope (`Type` and `TopicArn`) whose `Message` string holds any other shape and is held to the
same limits on its own, or else a native UploadEvent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate, count
from operator import sub
from typing import Any

from pydantic import ValidationError

from moderator.events.eventbridge import events_from_eventbridge, is_eventbridge
from moderator.events.s3notify import (
    NotificationError,
    TenantRule,
    events_from_notification,
    is_notification,
)
from moderator.events.sns import is_sns_envelope, sns_message
from moderator.events.upload import UploadEvent

MAX_MESSAGE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_SAFE_INT = 2**53 - 1
MAX_REASON_CHARS = 300

_BOM = b"\xef\xbb\xbf"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = b"[]{}"
# After deleting everything else, opening brackets become 2 and closing ones 0: the running sum
# minus the count of brackets seen is the nesting depth.
_DEPTH_TABLE = bytes.maketrans(_BRACKETS, b"\x02\x00\x02\x00")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_INT_DIGITS = len(str(MAX_SAFE_INT))


class MalformedMessage(ValueError):
    """The message is not a valid UploadEvent nor an S3 notification: it goes to the DLQ.

    Its text is always one printable line of at most MAX_REASON_CHARS characters.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason))


@dataclass(frozen=True)
class Parsed:
    events: list[UploadEvent]
    skipped_records: int = 0


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` as one printable line: control characters and lone surrogates escaped, cut short.

    Reasons quote parts of the input (member names, keys) and end up in Kafka headers and logs.
    """
    if len(text) <= limit and text.isprintable():
        return text
    clean = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return clean if len(text) <= limit and len(clean) <= limit else clean[: limit - 1] + "…"


def parse_message(value: bytes | None, rule: TenantRule) -> Parsed:
    """Parse a message value; raise MalformedMessage with a one-line reason."""
    return _parse_document(_decode_json(value), rule, in_sns=False)


def _parse_document(doc: Any, rule: TenantRule, *, in_sns: bool) -> Parsed:
    """The events of one decoded document of any accepted shape."""
    if is_notification(doc):
        try:
            events, skipped = events_from_notification(doc, rule)
        except NotificationError as exc:
            raise MalformedMessage(f"S3 notification: {exc}") from exc
        return Parsed(events, skipped)
    if is_eventbridge(doc):
        try:
            events, skipped = events_from_eventbridge(doc, rule)
        except NotificationError as exc:
            raise MalformedMessage(f"EventBridge event: {exc}") from exc
        return Parsed(events, skipped)
    if is_sns_envelope(doc):
        return _parse_sns(doc, rule, in_sns=in_sns)
    try:
        return Parsed([UploadEvent.model_validate(doc)])
    except ValidationError as exc:
        if isinstance(doc, dict) and {"Type", "Message"} <= doc.keys():
            raise MalformedMessage("an SNS envelope (Type, Message) without TopicArn") from exc
        raise MalformedMessage(_first_error(exc)) from exc


def _parse_sns(doc: dict[str, Any], rule: TenantRule, *, in_sns: bool) -> Parsed:
    """The events of the document in an SNS envelope's `Message` (one envelope deep)."""
    try:
        if in_sns:
            raise NotificationError("its Message is another SNS envelope")
        text = sns_message(doc)
    except NotificationError as exc:
        raise MalformedMessage(f"SNS message: {exc}") from exc
    if text is None:  # a subscription confirmation
        return Parsed([], 1)
    try:
        # The outer document has no lone surrogates (checked while decoding it), so this encodes.
        inner = _decode_json(text.encode("utf-8"))
        return _parse_document(inner, rule, in_sns=True)
    except MalformedMessage as exc:
        raise MalformedMessage(f"SNS message: {exc}") from exc


def _decode_json(value: bytes | None) -> Any:
    """The JSON value of a message within the limits above; MalformedMessage otherwise."""
    if value is None:
        raise MalformedMessage("message has no value")
    if not isinstance(value, bytes):
        raise MalformedMessage(f"message value is {type(value).__name__}, not bytes")
    if len(value) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message value is {len(value)} bytes (limit {MAX_MESSAGE_BYTES})")
    if value.startswith(_BOM):
        value = value[len(_BOM) :]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"not JSON: not UTF-8 (byte {exc.start})") from exc
    depth = _max_depth(value)
    if depth > MAX_DEPTH:
        raise MalformedMessage(f"not JSON: nested {depth} deep (limit {MAX_DEPTH})")
    try:
        doc = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(value) and _has_lone_surrogate(doc):
        raise MalformedMessage("not I-JSON: a string holds a lone surrogate")
    return doc


def _max_depth(value: bytes) -> int:
    """Deepest array/object nesting of (UTF-8) JSON text, found without recursion.

    Brackets inside strings do not count; unbalanced text yields some number, and the decoder
    rejects it afterwards.
    """
    if value.count(b"[") + value.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRING.sub(b"", value).translate(_DEPTH_TABLE, _NOT_BRACKETS)
    return max(map(sub, accumulate(brackets), count(1)), default=0)


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _INT_DIGITS:  # also keeps int() below Python's digit limit
        raise MalformedMessage(f"not I-JSON: integer of {digits} digits (limit +-(2**53 - 1))")
    number = int(text)
    if abs(number) > MAX_SAFE_INT:
        raise MalformedMessage(f"not I-JSON: integer {number} is outside +-(2**53 - 1)")
    return number


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise MalformedMessage(f"not I-JSON: number {text[:40]} is too large")
    return number


def _constant(name: str) -> Any:
    raise MalformedMessage(f"not JSON: {name} is not a number in JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise MalformedMessage(f"not I-JSON: member {name!r} appears twice in one object")
            seen.add(name)
    return doc


_DECODER = json.JSONDecoder(
    parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object
)
"""Built once: `json.loads` with hooks builds a decoder per call, half of a small event's
decode time. Threads may share it: its only state, a memo that interns member names, is
emptied after each call and never changes what a call returns."""


def _has_lone_surrogate(doc: Any) -> bool:
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"UploadEvent {where}: {err['msg']}{more}"
