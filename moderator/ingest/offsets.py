"""Timestamp → offset ranges of a topic, per partition (what a replay of a time range reads).

A partition's range for [from_ms, to_ms) is [start, end): start is the first offset whose
record has a timestamp >= from_ms, end the first whose timestamp >= to_ms; where there is none,
the end of the partition captured when the lookup began. Offsets are in log order: with
producer-set (CreateTime) timestamps a record inside the range may carry a timestamp outside
it, so a reader that must be exact checks each record's timestamp too (`in_window`).

Where the cluster does not answer timestamp lookups (librdkafka's mock cluster answers every
lookup with "no such record"), the result says so (`exact` is False) and its ranges are the whole
partitions; `scan_offsets` then finds the same offsets by reading the records.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from moderator.errors import ModeratorError

OFFSET_NONE = -1  # what offsets_for_times answers when no record has a timestamp >= the target


class OffsetLookupError(ModeratorError):
    """The topic's partitions or offsets could not be read (exit 1)."""


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int
    end: int  # exclusive; start == end: nothing in range

    @property
    def offsets(self) -> int:
        """Offsets in the range: records, plus any transaction markers and aborted records."""
        return self.end - self.start


@dataclass(frozen=True)
class TopicRange:
    topic: str
    from_ms: int
    to_ms: int
    partitions: tuple[PartitionRange, ...]
    exact: bool  # False: timestamp lookups unsupported; the ranges are whole partitions


def in_window(timestamp_ms: int, from_ms: int, to_ms: int) -> bool:
    return from_ms <= timestamp_ms < to_ms


def resolve(partition: int, start: int, end: int, low: int, high: int) -> PartitionRange:
    """A partition's range from its two lookups (OFFSET_NONE: no such record) and its
    watermarks; clamped to [low, high] so that records appended since the watermarks were
    read are left out."""

    def clamp(offset: int) -> int:
        return high if offset == OFFSET_NONE else min(max(offset, low), high)

    first = clamp(start)
    return PartitionRange(partition, first, max(first, clamp(end)))


def lookups_answered(probes: dict[int, int], watermarks: dict[int, tuple[int, int]]) -> bool:
    """Whether lookups at timestamp 0 were answered: every record has a timestamp >= 0, so a
    non-empty partition must give an offset; OFFSET_NONE there means the cluster does not look
    timestamps up. True when every partition is empty (nothing to tell, nothing to read)."""
    return all(probes[p] != OFFSET_NONE for p, (low, high) in watermarks.items() if high > low)


def time_range_offsets(
    consumer: Any, topic: str, from_ms: int, to_ms: int, *, timeout_s: float
) -> TopicRange:
    """Per partition of `topic`, the offsets of [from_ms, to_ms) (module docstring).

    `consumer`: a confluent_kafka.Consumer; with isolation.level=read_committed (as ours are)
    the captured end is the last stable offset, not the high watermark. Raises
    OffsetLookupError when the topic or its offsets cannot be read within `timeout_s`.
    """
    if from_ms > to_ms:
        raise ValueError(f"from_ms {from_ms} is after to_ms {to_ms}")
    partitions = partitions_of(consumer, topic, timeout_s)
    watermarks = {p: watermarks_of(consumer, topic, p, timeout_s) for p in partitions}
    probes = _lookup(consumer, topic, partitions, 0, timeout_s)
    if not lookups_answered(probes, watermarks):
        ranges = tuple(PartitionRange(p, *watermarks[p]) for p in partitions)
        return TopicRange(topic, from_ms, to_ms, ranges, exact=False)
    starts = _lookup(consumer, topic, partitions, from_ms, timeout_s)
    ends = _lookup(consumer, topic, partitions, to_ms, timeout_s)
    ranges = tuple(resolve(p, starts[p], ends[p], *watermarks[p]) for p in partitions)
    return TopicRange(topic, from_ms, to_ms, ranges, exact=True)


def scan_offsets(
    consumer: Any, topic: str, from_ms: int, to_ms: int, *, timeout_s: float
) -> TopicRange:
    """The same offsets as time_range_offsets, found by reading every record between the
    watermarks (for clusters that do not look timestamps up). `consumer` is assigned the
    topic's partitions and left unassigned afterwards."""
    if from_ms > to_ms:
        raise ValueError(f"from_ms {from_ms} is after to_ms {to_ms}")
    partitions = partitions_of(consumer, topic, timeout_s)
    watermarks = {p: watermarks_of(consumer, topic, p, timeout_s) for p in partitions}
    found: dict[int, list[int]] = {p: [OFFSET_NONE, OFFSET_NONE] for p in partitions}
    open_parts = {p for p, (low, high) in watermarks.items() if high > low}
    consumer.assign([TopicPartition(topic, p, watermarks[p][0]) for p in sorted(open_parts)])
    deadline = time.monotonic() + timeout_s
    try:
        while open_parts:
            if time.monotonic() > deadline:
                raise OffsetLookupError(
                    f"kafka: reading {topic} for timestamps took longer than {timeout_s:g} s"
                )
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None or msg.partition() not in open_parts:
                    continue
                _note(found[msg.partition()], msg.offset(), msg.timestamp()[1], from_ms, to_ms)
            open_parts -= _done(consumer, topic, open_parts, watermarks, found)
    finally:
        consumer.unassign()
    ranges = tuple(resolve(p, found[p][0], found[p][1], *watermarks[p]) for p in partitions)
    return TopicRange(topic, from_ms, to_ms, ranges, exact=True)


def _note(found: list[int], offset: int, timestamp: int, from_ms: int, to_ms: int) -> None:
    for i, bound in enumerate((from_ms, to_ms)):
        if found[i] == OFFSET_NONE and timestamp >= bound:
            found[i] = offset


def _done(
    consumer: Any,
    topic: str,
    parts: set[int],
    watermarks: dict[int, tuple[int, int]],
    found: dict[int, list[int]],
) -> set[int]:
    """Partitions read to their captured end (the position passes transaction markers too),
    or whose both offsets are found."""
    positions = consumer.position([TopicPartition(topic, p) for p in sorted(parts)])
    done = {tp.partition for tp in positions if tp.offset >= watermarks[tp.partition][1]}
    return done | {p for p in parts if OFFSET_NONE not in found[p]}


def partitions_of(consumer: Any, topic: str, timeout_s: float) -> list[int]:
    """The partition numbers of `topic`; OffsetLookupError when it cannot be read."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise OffsetLookupError(f"kafka: cannot read the partitions of {topic}: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        why = (
            found.error.str() if found is not None and found.error is not None else "no such topic"
        )
        raise OffsetLookupError(f"kafka: cannot read the partitions of {topic}: {why}")
    return sorted(found.partitions)


def watermarks_of(consumer: Any, topic: str, partition: int, timeout_s: float) -> tuple[int, int]:
    """(low, high): with read_committed consumers, high is the last stable offset."""
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
    except KafkaException as exc:
        raise OffsetLookupError(
            f"kafka: cannot read the offsets of {topic} [{partition}]: {exc}"
        ) from exc
    return int(low), int(high)


def _lookup(
    consumer: Any, topic: str, partitions: list[int], timestamp_ms: int, timeout_s: float
) -> dict[int, int]:
    """One offsets_for_times request for every partition at one timestamp (a partition may
    appear only once per request: librdkafka answers -1 for all of them otherwise)."""
    asked = [TopicPartition(topic, p, timestamp_ms) for p in partitions]
    try:
        answered = consumer.offsets_for_times(asked, timeout=timeout_s)
    except KafkaException as exc:
        raise OffsetLookupError(
            f"kafka: timestamp lookup on {topic} failed: {exc.args[0] if exc.args else exc}"
        ) from exc
    out = {}
    for tp in answered:
        if tp.error is not None:
            raise OffsetLookupError(
                f"kafka: timestamp lookup on {topic} [{tp.partition}] failed: {tp.error.str()}"
            )
        out[tp.partition] = tp.offset
    return out


def read_until(
    consumer: Any, topic: str, starts: dict[int, int], ends: dict[int, int]
) -> Iterator[Any]:
    """Every record of `topic` from `starts` (offsets, or OFFSET_BEGINNING) until each
    partition's position reaches its entry in `ends` (transaction markers included). Yields
    messages without an error; `consumer` is assigned those partitions and left unassigned."""
    open_parts = {p for p, end in ends.items() if end > max(starts.get(p, 0), 0)}
    consumer.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in sorted(open_parts)])
    try:
        while open_parts:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    yield msg
            done = consumer.position([TopicPartition(topic, p) for p in sorted(open_parts)])
            open_parts -= {tp.partition for tp in done if tp.offset >= ends[tp.partition]}
    finally:
        consumer.unassign()
