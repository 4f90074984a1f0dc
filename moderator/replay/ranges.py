"""The offsets a replay reads, found once at its start (the plan keeps them).

- `--offsets`: as given, clamped to what the partition still holds (retention may have deleted
  the start; the end never goes past the end captured now, so a live topic's replay ends), with
  a note for people on each range that was clamped.
- `--from`/`--to`: the broker's timestamp lookup where it answers; where it does not (the
  embedded broker), the records are read from the earliest offset and the same offsets found
  from their timestamps. Either way each record's timestamp is checked again while replaying.
- neither: every partition from its earliest offset to the end captured now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from moderator.errors import ConfigError
from moderator.ingest.offsets import (
    OffsetLookupError,
    partitions_of,
    scan_offsets,
    time_range_offsets,
    watermarks_of,
)
from moderator.replay.request import OffsetRange


def find_ranges(
    consumer: Any,
    topic: str,
    *,
    offsets: Sequence[OffsetRange] | None,
    from_ms: int | None,
    to_ms: int | None,
    now_ms: int,
    timeout_s: float,
) -> tuple[tuple[OffsetRange, ...], str, list[str]]:
    """(ranges, how they were found, a note on each `--offsets` range that was clamped) of the
    uploads topic `topic`. Raises ConfigError naming kafka.topics.uploads when the cluster has
    no such topic, OffsetLookupError when Kafka does not answer."""
    try:
        partitions = partitions_of(consumer, topic, timeout_s)
    except OffsetLookupError:
        if _missing(consumer, topic, timeout_s):
            raise ConfigError(
                f"kafka.topics.uploads: topic {topic} does not exist on the cluster"
            ) from None
        raise
    marks = {p: watermarks_of(consumer, topic, p, timeout_s) for p in partitions}
    if offsets:
        unknown = sorted({r.partition for r in offsets} - set(partitions))
        if unknown:
            raise ConfigError(
                f"--offsets: {topic} has no partition {unknown[0]} (it has {len(partitions)})"
            )
        clamped = tuple(_clamp(r, *marks[r.partition]) for r in offsets)
        notes = [clamp_note(r, *marks[r.partition]) for r in offsets]
        return clamped, "offsets", [n for n in notes if n is not None]
    if from_ms is None and to_ms is None:
        return tuple(OffsetRange(p, *marks[p]) for p in partitions), "whole topic", []
    start = from_ms if from_ms is not None else 0
    end = to_ms if to_ms is not None else now_ms + 1
    found = time_range_offsets(consumer, topic, start, end, timeout_s=timeout_s)
    how = "timestamp lookup"
    if not found.exact:
        found = scan_offsets(consumer, topic, start, end, timeout_s=timeout_s)
        how = "timestamp scan: the broker does not look timestamps up"
    return tuple(OffsetRange(r.partition, r.start, r.end) for r in found.partitions), how, []


def output_ends(consumer: Any, topic: str, timeout_s: float) -> dict[int, int]:
    """Each partition's end on the output topic: this run's results come after it. A topic that
    does not exist yet has no results before this run ({}: read it from its beginning)."""
    if _missing(consumer, topic, timeout_s):
        return {}
    return {
        p: watermarks_of(consumer, topic, p, timeout_s)[1]
        for p in partitions_of(consumer, topic, timeout_s)
    }


def _missing(consumer: Any, topic: str, timeout_s: float) -> bool:
    """Whether the cluster answers that `topic` does not exist. OffsetLookupError when it
    does not answer."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise OffsetLookupError(f"kafka: cannot read the partitions of {topic}: {exc}") from exc
    found = metadata.topics.get(topic)
    unknown = KafkaError.UNKNOWN_TOPIC_OR_PART
    return found is None or (found.error is not None and found.error.code() == unknown)


def _clamp(r: OffsetRange, low: int, high: int) -> OffsetRange:
    start = min(max(r.start, low), high)
    return OffsetRange(r.partition, start, max(start, min(r.end, high)))


def clamp_note(r: OffsetRange, low: int, high: int) -> str | None:
    """What clamping `r` to a partition holding [low, high) changes, for people; None when
    nothing. Ranges are written as `--offsets` takes them (end exclusive)."""
    clamped = _clamp(r, low, high)
    if r.start == r.end or (clamped.start, clamped.end) == (r.start, r.end):
        return None  # an empty range stays empty: nothing was asked
    p = r.partition
    asked = f"--offsets {p}:{r.start}-{r.end}"
    if r.start >= high:
        return f"{asked} starts at or past the end of partition {p} ({high}); nothing is replayed"
    if r.end <= low:
        return (
            f"{asked} ends before the earliest offset of partition {p} ({low}; older ones were "
            "deleted); nothing is replayed"
        )
    why = []
    if r.start < low:
        why.append(f"starts before the earliest offset of partition {p} ({low})")
    if r.end > high:
        why.append(f"ends past the end of partition {p} ({high})")
    return f"{asked} {' and '.join(why)}; replaying {p}:{clamped.start}-{clamped.end}"
