"""A consumer group's lag per partition: committed offset, high watermark, last stable offset.

Lag counts offsets, not records. Transaction markers and aborted records take offsets too,
so on a topic written in transactions (`moderation.audit`, `moderation.verdicts`) a group that
has read everything still shows a lag of 1 per transaction marker after the last record it
committed: a consumer that commits "last record + 1" (the audit sink) ends one marker short,
one that commits its position (librdkafka's position passes markers) ends at 0. `stable_lag`
counts to the last stable offset instead, i.e. leaves out an open transaction's records,
which a read_committed reader cannot read yet.

`group_lag` asks the cluster (the `lag` command); `assigned_lag` is what a running consumer
knows without asking (the service's `moderator_consumer_lag`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from moderator.errors import ModeratorError

# Re-exported by confluent_kafka.admin without being listed as an export, and untyped.
_OffsetSpec: Any = import_module("confluent_kafka.admin").OffsetSpec

_UNSTABLE_RETRY_S = 0.1


class LagError(ModeratorError):
    """The group's offsets or the topic's watermarks could not be read (exit 1)."""


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed this partition
    low_watermark: int
    high_watermark: int
    last_stable: int  # the end a read_committed reader sees (== high without open transactions)

    @property
    def position(self) -> int:
        """Where the group resumes: its commit, else the earliest offset (our groups use
        auto.offset.reset=earliest)."""
        committed = self.committed if self.committed is not None else self.low_watermark
        return max(committed, self.low_watermark)  # retention may have passed the commit

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - self.position)

    @property
    def stable_lag(self) -> int:
        return max(0, self.last_stable - self.position)


def partition_lags(
    committed: Mapping[int, int | None],
    low: Mapping[int, int],
    high: Mapping[int, int],
    stable: Mapping[int, int],
) -> list[PartitionLag]:
    """Pure: one PartitionLag per partition of `high`, in partition order."""
    return [
        PartitionLag(p, committed.get(p), low[p], high[p], stable.get(p, high[p]))
        for p in sorted(high)
    ]


def assigned_lag(
    consumer: Any, assigned: Iterable[tuple[str, int]], committed: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Lag of a running consumer's partitions, without a request to the cluster.

    The end of each partition is the high watermark librdkafka cached from its last fetch
    (`get_watermark_offsets(cached=True)`; a paused partition's end is as old as its last
    fetch). The start is `committed` (the loop's last commit, or where it started reading),
    else the consumer's position. Partitions with neither end nor start known are left out,
    and so is everything when the consumer cannot tell its watermarks (the in-memory broker).
    """
    watermarks = getattr(consumer, "get_watermark_offsets", None)
    if watermarks is None:
        return {}
    tps = list(assigned)
    starts = {tp: committed[tp] for tp in tps if tp in committed}
    unknown = [TopicPartition(t, p) for t, p in tps if (t, p) not in starts]
    try:
        positions = consumer.position(unknown) if unknown else []
    except KafkaException:
        positions = []
    for part in positions:
        if part.offset >= 0:
            starts[(part.topic, part.partition)] = part.offset
    out: dict[tuple[str, int], int] = {}
    for tp, start in starts.items():
        try:
            ends = watermarks(TopicPartition(*tp), cached=True)
        except KafkaException:
            continue
        if ends is not None and ends[1] >= 0:
            out[tp] = max(0, ends[1] - start)
    return out


def group_lag(
    admin: Any, group: str, topic: str, *, timeout_s: float, require_stable: bool = False
) -> list[PartitionLag]:
    """Lag of `group` on every partition of `topic`, read with a confluent_kafka AdminClient.

    Offsets a group sends with a transaction count once the transaction commits. With
    `require_stable` the broker is asked for no other (it answers "unstable" while a commit
    is still being written; retried until `timeout_s`); without it, the last committed offsets
    are returned at once (a metrics scrape should not wait on a transaction).
    """
    partitions = _partitions(admin, topic, timeout_s)
    committed = _committed(admin, group, topic, partitions, timeout_s, require_stable)
    low = _offsets(admin, topic, partitions, "earliest", IsolationLevel.READ_UNCOMMITTED, timeout_s)
    high = _offsets(admin, topic, partitions, "latest", IsolationLevel.READ_UNCOMMITTED, timeout_s)
    stable = _offsets(admin, topic, partitions, "latest", IsolationLevel.READ_COMMITTED, timeout_s)
    return partition_lags(committed, low, high, stable)


def _partitions(admin: Any, topic: str, timeout_s: float) -> list[int]:
    try:
        found = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise LagError(f"kafka: cannot read the partitions of {topic}: {_reason(exc)}") from exc
    if found is None or found.error is not None or not found.partitions:
        why = (
            found.error.str() if found is not None and found.error is not None else "no such topic"
        )
        raise LagError(f"kafka: cannot read the partitions of {topic}: {why}")
    return sorted(found.partitions)


def _committed(
    admin: Any,
    group: str,
    topic: str,
    partitions: list[int],
    timeout_s: float,
    require_stable: bool,
) -> dict[int, int | None]:
    deadline = time.monotonic() + timeout_s
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])]
    while True:
        futures = admin.list_consumer_group_offsets(
            request, require_stable=require_stable, request_timeout=timeout_s
        )
        try:
            answer = next(iter(futures.values())).result()
        except KafkaException as exc:
            raise LagError(
                f"kafka: cannot read the offsets of group {group}: {_reason(exc)}"
            ) from exc
        unstable = [
            tp
            for tp in answer.topic_partitions
            if tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT
        ]
        if not unstable:
            break
        if time.monotonic() + _UNSTABLE_RETRY_S > deadline:
            raise LagError(
                f"kafka: group {group} still had a transactional commit pending on {topic} "
                f"after {timeout_s:g} s"
            )
        time.sleep(_UNSTABLE_RETRY_S)
    out: dict[int, int | None] = {}
    for tp in answer.topic_partitions:
        if tp.error is not None:
            raise LagError(
                f"kafka: cannot read the offset of group {group} on {topic} [{tp.partition}]: "
                f"{tp.error.str()}"
            )
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


def _offsets(
    admin: Any,
    topic: str,
    partitions: list[int],
    which: str,
    isolation: IsolationLevel,
    timeout_s: float,
) -> dict[int, int]:
    spec = _OffsetSpec.earliest() if which == "earliest" else _OffsetSpec.latest()
    futures = admin.list_offsets(
        {TopicPartition(topic, p): spec for p in partitions},
        isolation_level=isolation,
        request_timeout=timeout_s,
    )
    out = {}
    for tp, future in futures.items():
        try:
            out[tp.partition] = int(future.result().offset)
        except KafkaException as exc:
            raise LagError(
                f"kafka: cannot read the {which} offset of {topic} [{tp.partition}]: {_reason(exc)}"
            ) from exc
    return out


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    return " ".join(str(text).split())
