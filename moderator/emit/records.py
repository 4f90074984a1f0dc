"""Output records: verdict + audit with CloudEvents binary-mode headers, DLQ records (pure)."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from moderator.emit.serialise import audit_json
from moderator.events.verdict import AuditRecord, Verdict

Headers = list[tuple[str, bytes]]
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

MAX_RECORD_BYTES = 1_000_000
"""The most an output record may hold, key, value and headers together: librdkafka's default
`message.max.bytes`, under the brokers' default batch limit (1,048,588 bytes). A larger record
fails at `produce`, and with it the whole checkpoint, again at every try: no input may make one
(inputs and model output are bounded upstream, and a DLQ record is cut to fit, `dlq_output`)."""
RECORD_MARGIN_BYTES = 1024  # librdkafka's own framing of a record and its headers
MAX_SOURCE_HEADER_BYTES = 16 * 1024
"""The most of a dead-lettered message's own headers its DLQ record keeps (more: none kept)."""


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Trace:
    """W3C trace context of one event: the trace it belongs to and our outputs' parent span.

    The one source of the event's trace: the verdict's `trace_id`, the outputs' `traceparent`
    and the event span (moderator.obs.tracing, started from this) all take the trace from here.
    """

    trace_id: str
    parent_span: str | None  # the producer's span from the upload's header; None: a new trace
    flags: str = "01"
    span_id: str | None = None  # our event span, once one is started for the event

    def traceparent(self) -> str:
        """Our outputs' context: a child of the event span, else of a fresh span id."""
        span = self.span_id or new_span_id()
        return f"00-{self.trace_id}-{span}-{self.flags}"


def new_span_id() -> str:
    """A random, non-zero 64-bit span id in hex.

    Not `secrets`: a span id is no secret, and `os.urandom` lets go of the interpreter lock for
    its system call, which on the engine window's thread costs a wait for the lock to come back
    behind the decoding threads, once per record (docs/performance.md, "The interpreter lock's
    hand-backs"). The module's generator is reseeded in a forked child.
    """
    return f"{random.getrandbits(64) or 1:016x}"


def trace_from_headers(headers: object, event_id: str) -> Trace:
    """Continue the producer's trace when it sent a valid `traceparent`; else a trace derived from
    the event id, so a re-decision after a crash stays in the same trace.

    Headers come from the producer unchecked: entries of another shape or type are ignored, like
    an invalid `traceparent`.
    """
    found = traceparent_of(headers)
    if found is not None:
        return Trace(*found)
    return Trace(hashlib.sha256(event_id.encode()).hexdigest()[:32], None)


def traceparent_of(headers: object) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of the first valid `traceparent` header, in lowercase hex."""
    for name, value in _pairs(headers):
        if name.lower() != "traceparent":
            continue
        text = value if isinstance(value, str) else value.decode("ascii", "replace")
        match = _TRACEPARENT.match(text.strip().lower())
        if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
            return match.group(1), match.group(2), match.group(3)
    return None


def _pairs(headers: object) -> Iterator[tuple[str, bytes | str]]:
    """The (name, value) entries of a header list that have the types Kafka clients use."""
    if not isinstance(headers, list | tuple):
        return
    for entry in headers:
        if isinstance(entry, tuple) and len(entry) == 2:
            name, value = entry
            if isinstance(name, str) and isinstance(value, bytes | str):
                yield name, value


def cloudevent_headers(
    *, ce_id: str, ce_type: str, source: str, subject: str, time: datetime, traceparent: str
) -> Headers:
    iso = time.isoformat().replace("+00:00", "Z")
    pairs = [
        ("ce_specversion", "1.0"),
        ("ce_id", ce_id),
        ("ce_source", source),
        ("ce_type", ce_type),
        ("ce_subject", subject),
        ("ce_time", iso),
        ("content-type", "application/json"),
        ("traceparent", traceparent),
    ]
    return [(k, v.encode()) for k, v in pairs]


# The names in cloudevent_headers' order, and each output kind's ce_type.
_HEADER_ORDER = (
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_subject",
    "ce_time",
    "content-type",
    "traceparent",
)
_CE_TYPES = {kind: f"moderator.{kind}.v1".encode() for kind in ("verdict", "audit")}


def verdict_outputs(
    verdict: Verdict,
    audit: AuditRecord,
    *,
    verdicts_topic: str,
    audit_topic: str,
    source: str,
    trace: Trace,
) -> list[OutRecord]:
    """The verdict and its audit record, keyed `{tenant}:{bucket}/{key}`, with the headers of
    `cloudevent_headers`. The verdict is serialised once, for both records (emit.serialise)."""
    subject = f"{verdict.object.bucket}/{verdict.object.key}"
    key = f"{verdict.tenant_id}:{subject}".encode()
    verdict_json = verdict.to_json()
    nested = verdict_json if audit.verdict is verdict else audit.verdict.to_json()
    # Every header but ce_id and ce_type is the same on both records: encoded once.
    shared = {
        "ce_specversion": b"1.0",
        "ce_source": source.encode(),
        "ce_subject": subject.encode(),
        "ce_time": verdict.decided_at.isoformat().replace("+00:00", "Z").encode(),
        "content-type": b"application/json",
        "traceparent": trace.traceparent().encode(),
    }
    out = []
    for topic, kind, value in (
        (verdicts_topic, "verdict", verdict_json),
        (audit_topic, "audit", audit_json(audit, nested)),
    ):
        own = {"ce_id": f"{verdict.event_id}/{kind}".encode(), "ce_type": _CE_TYPES[kind]}
        headers = [(name, own[name] if name in own else shared[name]) for name in _HEADER_ORDER]
        out.append(OutRecord(topic, key, value, headers))
    return out


def dlq_output(
    *,
    dlq_topic: str,
    key: bytes | None,
    value: bytes | None,
    code: str,
    message: str,
    source_topic: str,
    partition: int,
    offset: int,
    headers: Any = None,
) -> OutRecord:
    """The original message with the error and its origin in headers: unchanged, unless key
    and value together would not fit in MAX_RECORD_BYTES. Then the value (and, were it still
    too long, the key) is cut to fit, and `moderator.source.value_bytes` (and
    `moderator.source.key_bytes`) give the original length; the whole message stays on the
    source topic at the coordinates in the headers, while that topic keeps it.

    The message's own `headers` (as the consumer gives them) come first, kept as they are,
    except any named `moderator.*` (ours follow them; a producer cannot pass one off as ours)
    and any without a value. Together over MAX_SOURCE_HEADER_BYTES, none is kept and
    `moderator.source.headers_bytes` says how much there was."""
    ours = [
        ("moderator.error.code", code.encode()),
        ("moderator.error.message", message[:1000].encode()),
        ("moderator.source.topic", source_topic.encode()),
        ("moderator.source.partition", str(partition).encode()),
        ("moderator.source.offset", str(offset).encode()),
    ]
    all_headers = _source_headers(headers) + ours
    key_len, value_len = len(key or b""), len(value or b"")
    room = MAX_RECORD_BYTES - RECORD_MARGIN_BYTES - _header_bytes(all_headers)
    if key_len + value_len <= room:
        return OutRecord(dlq_topic, key, value, all_headers)
    cut_key = key is not None and key_len > room // 2
    if cut_key:
        all_headers.append(("moderator.source.key_bytes", str(key_len).encode()))
    all_headers.append(("moderator.source.value_bytes", str(value_len).encode()))
    room = MAX_RECORD_BYTES - RECORD_MARGIN_BYTES - _header_bytes(all_headers)
    if cut_key and key is not None:
        key = key[: room // 2]
    if value is not None:
        value = value[: max(0, room - len(key or b""))]
    return OutRecord(dlq_topic, key, value, all_headers)


def _source_headers(headers: Any) -> Headers:
    """The dead-lettered message's own headers that its DLQ record keeps (see dlq_output)."""
    if not isinstance(headers, list | tuple):
        return []
    kept: Headers = [
        (name, bytes(value))
        for entry in headers
        if isinstance(entry, tuple) and len(entry) == 2
        for name, value in [entry]
        if isinstance(name, str)
        and not name.startswith("moderator.")
        and isinstance(value, bytes | bytearray)
    ]
    size = _header_bytes(kept)
    if size > MAX_SOURCE_HEADER_BYTES:
        return [("moderator.source.headers_bytes", str(size).encode())]
    return kept


def record_bytes(record: OutRecord) -> int:
    """What `record` holds: its key, value and headers, in bytes."""
    return len(record.key or b"") + len(record.value or b"") + _header_bytes(record.headers)


def _header_bytes(headers: Headers) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def replay_output(record: OutRecord, verdict: Verdict, *, topic: str, run_id: str) -> OutRecord:
    """A replayed verdict on the replay topic: the live verdict record's key and headers, its
    value `verdict` (which carries `replay`), and `ce_id` `{event_id}/replay/{run_id}` so each
    run's verdict of an event has its own id."""
    ce_id = f"{verdict.event_id}/replay/{run_id}".encode()
    headers = [(k, ce_id if k == "ce_id" else v) for k, v in record.headers]
    return OutRecord(topic, record.key, verdict.to_json(), headers)
