"""What a replay is asked to do, parsed from its flags, and the event filter it implies. Pure.

A replay reads a range of `uploads`: a time range (`--from`/`--to`, ISO 8601 as `audit query`
takes `--since`/`--until`: a date alone is 00:00 UTC that day, a time without an offset is
UTC), explicit offsets per partition (`--offsets 0:100-200,1:0-50`, end exclusive), or the
whole topic up to its end when started. Events can be kept to some tenants (`--tenant`,
repeatable) and sampled (`--sample 0.1`): sampling hashes the event id, so a resumed run, and
any later run with the same rate, keeps the same events.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from moderator.audit.read.filters import BadFilter, parse_time_arg
from moderator.errors import ConfigError
from moderator.events.upload import tenant_id_problem

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OFFSET_ITEM = re.compile(r"(\d{1,6}):(\d{1,19})-(\d{1,19})")
MAX_OFFSET = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class OffsetRange:
    partition: int
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class EventFilter:
    """Which events of the range are replayed: tenants (empty: all), a time window and a rate."""

    tenants: frozenset[str] = frozenset()
    from_ms: int | None = None
    to_ms: int | None = None
    sample: float = 1.0

    def keeps(self, event_id: str, tenant_id: str, timestamp_ms: int | None) -> bool:
        if self.tenants and tenant_id not in self.tenants:
            return False
        if timestamp_ms is not None:
            if self.from_ms is not None and timestamp_ms < self.from_ms:
                return False
            if self.to_ms is not None and timestamp_ms >= self.to_ms:
                return False
        return self.sample >= 1.0 or sampled(event_id) < self.sample


def sampled(event_id: str) -> float:
    """A fraction in [0, 1) fixed by the event id alone."""
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def parse_time(flag: str, text: str) -> int:
    """An ISO 8601 time, as `audit query --since/--until` takes it (`parse_time_arg`) →
    milliseconds since the epoch. A date alone is 00:00 UTC that day, a time without an offset
    is UTC; digits past the millisecond are dropped, never rounded up. A bad value is one line
    naming `flag`."""
    try:
        moment = parse_time_arg(flag, text)
    except BadFilter as exc:
        raise ConfigError(f"{flag}: {exc.reason}") from exc
    return (moment - EPOCH) // MILLISECOND


def utc_text(ms: int) -> str:
    """Milliseconds since the epoch → RFC 3339 in UTC (`2026-12-01T00:00:00Z`, with `.123`
    only when the milliseconds are not 0): how a `--from`/`--to` value was read."""
    moment = EPOCH + ms * MILLISECOND
    fraction = f".{ms % 1000:03d}" if ms % 1000 else ""
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def parse_window(
    from_text: str | None, to_text: str | None, now_ms: int
) -> tuple[int | None, int | None]:
    """`--from`/`--to` → (from_ms, to_ms), None where not given. Without `--to` the range ends
    at `now_ms` (the start of the run), so a `--from` after it is refused as in the future.
    Times before 1970 are 0 (no record is older), as Kafka's timestamp lookup takes negative
    timestamps for its special values."""
    from_ms = parse_time("--from", from_text) if from_text is not None else None
    to_ms = parse_time("--to", to_text) if to_text is not None else None
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        start, end = utc_text(from_ms), utc_text(to_ms)
        read = ""  # how the values were read, where one was not written that way (a date alone)
        if (from_text, to_text) != (start, end):
            read = f" (both are {start})" if start == end else f" (--from is {start}, --to {end})"
        raise ConfigError(f"--to: must be later than --from{read}")
    if from_ms is not None and to_ms is None and from_ms > now_ms:
        raise ConfigError(f"--from: {utc_text(from_ms)} is in the future (the range ends now)")
    return _not_before_1970(from_ms), _not_before_1970(to_ms)


def _not_before_1970(ms: int | None) -> int | None:
    return None if ms is None else max(ms, 0)


def parse_offsets(text: str) -> tuple[OffsetRange, ...]:
    """`0:100-200,1:0-50` → ranges (end exclusive); each partition at most once."""
    ranges: dict[int, OffsetRange] = {}
    for item in (part.strip() for part in text.split(",")):
        match = _OFFSET_ITEM.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"--offsets: {item!r} is not PARTITION:START-END (e.g. 0:100-200, end exclusive)"
            )
        partition, start, end = (int(g) for g in match.groups())
        if end < start or end > MAX_OFFSET:
            raise ConfigError(f"--offsets: {item!r}: END must be >= START and a valid offset")
        if partition in ranges:
            raise ConfigError(f"--offsets: partition {partition} is given twice")
        ranges[partition] = OffsetRange(partition, start, end)
    return tuple(ranges[p] for p in sorted(ranges))


def parse_sample(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"--sample: {text!r} must be a fraction in (0, 1], e.g. 0.1")
    return rate


def parse_tenants(values: list[str] | None) -> frozenset[str]:
    """The `--tenant` values (empty: every tenant); one that no event could carry is an error,
    not a filter that quietly keeps nothing."""
    for value in values or ():
        problem = tenant_id_problem(value)
        if problem is not None:
            raise ConfigError(f"--tenant: {problem}")
    return frozenset(values or ())


def check_output_topic(topic: str, *, uploads: str, live: tuple[str, ...], allow_live: bool) -> str:
    """The `--output-topic` (or its default): never the uploads topic, a live one only when
    allowed (`--allow-live-output`)."""
    if not topic:
        raise ConfigError("--output-topic: must name a topic")
    if topic == uploads:
        raise ConfigError(f"--output-topic: {topic} is the uploads topic being replayed")
    if topic in live and not allow_live:
        raise ConfigError(
            f"--output-topic: {topic} is a live topic; add --allow-live-output to write there"
        )
    return topic


def range_text(
    offsets: str | None, from_text: str | None, to_text: str | None, now_ms: int | None = None
) -> str:
    """The range as asked, for people (the start line, a dry run and the report header): times
    as they were read, in UTC (`--from 2026-12-01` is `2026-12-01T00:00:00Z`); without `--to`,
    the start of the run, at `now_ms` when given."""
    if offsets:
        return f"offsets {offsets}"
    if from_text or to_text:
        start = _read_as(from_text) if from_text else "the earliest record"
        end = _read_as(to_text) if to_text else "the start of the run"
        if not to_text and now_ms is not None:
            end += f" ({utc_text(now_ms)})"
        return f"{start} .. {end}"
    return "the whole topic"


def _read_as(text: str) -> str:
    """A `--from`/`--to` value in UTC; as typed (quoted) if it is not a time at all."""
    try:
        return utc_text(parse_time("--from", text))
    except ConfigError:
        return repr(text)


def check_run_id(text: str) -> str:
    if not RUN_ID_RE.fullmatch(text):
        raise ConfigError(
            f"--resume: {text!r} is not a run id (letters, digits, '.', '_', '-'; up to 64)"
        )
    return text


def new_run_id(now: datetime) -> str:
    """`r20261205T231500Z-3f9a`: sortable by start time, unique enough per cluster."""
    return f"r{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
