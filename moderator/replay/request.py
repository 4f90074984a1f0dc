"""What a replay is asked to do, parsed from its flags, and the event filter it implies. Pure.

A replay reads a range of `uploads`: a time range (`--from`/`--to`, RFC 3339), explicit offsets
per partition (`--offsets 0:100-200,1:0-50`, end exclusive), or the whole topic up to its end
when started. Events can be kept to some tenants (`--tenant`, repeatable) and sampled
(`--sample 0.1`): sampling hashes the event id, so a resumed run, and any later run with the
same rate, keeps the same events.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from moderator.errors import ConfigError
from moderator.events.upload import tenant_id_problem

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OFFSET_ITEM = re.compile(r"(\d{1,6}):(\d{1,19})-(\d{1,19})")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
MAX_OFFSET = 2**63 - 1


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
    """An RFC 3339 time (with its offset) → milliseconds since the epoch."""
    if not _RFC3339.fullmatch(text):
        raise ConfigError(
            f"{flag}: {text!r} is not an RFC 3339 time with an offset "
            "(e.g. 2026-11-29T02:00:00Z or 2026-11-29T03:00:00+01:00)"
        )
    normal = text.replace("z", "Z").replace("t", "T").replace(" ", "T")
    fraction = re.search(r"\.(\d+)", normal)
    if fraction and len(fraction.group(1)) > 6:  # datetime keeps microseconds
        normal = normal.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        moment = datetime.fromisoformat(normal)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {text!r} is not a valid time: {exc}") from exc
    return int(moment.astimezone(UTC).timestamp() * 1000)


def parse_window(
    from_text: str | None, to_text: str | None, now_ms: int
) -> tuple[int | None, int | None]:
    """`--from`/`--to` → (from_ms, to_ms), None where not given. Without `--to` the range ends
    at `now_ms` (the start of the run), so a `--from` after it is refused as in the future."""
    from_ms = parse_time("--from", from_text) if from_text is not None else None
    to_ms = parse_time("--to", to_text) if to_text is not None else None
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise ConfigError("--to: must be later than --from")
    if from_ms is not None and to_ms is None and from_ms > now_ms:
        raise ConfigError(f"--from: {from_text} is in the future (the range ends now)")
    return from_ms, to_ms


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


def range_text(offsets: str | None, from_text: str | None, to_text: str | None) -> str:
    """The range as asked, for people (the report header)."""
    if offsets:
        return f"offsets {offsets}"
    if from_text or to_text:
        return f"{from_text or 'the earliest record'} .. {to_text or 'the start of the run'}"
    return "the whole topic"


def check_run_id(text: str) -> str:
    if not RUN_ID_RE.fullmatch(text):
        raise ConfigError(
            f"--resume: {text!r} is not a run id (letters, digits, '.', '_', '-'; up to 64)"
        )
    return text


def new_run_id(now: datetime) -> str:
    """`r20261205T231500Z-3f9a`: sortable by start time, unique enough per cluster."""
    return f"r{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
