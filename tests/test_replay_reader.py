"""RangeConsumer: a replay reads exactly its offset ranges, then says it has finished.

The inner consumer here is `FakeRangeLog`, a hand-written test double of the few confluent-kafka
Consumer calls RangeConsumer makes (the in-memory broker's consumer is a group member and has no
`assign`). Its log may hold transaction markers: offsets below the log's end that are never
delivered, which the position steps over as librdkafka's does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, TIMESTAMP_CREATE_TIME, TopicPartition

from moderator.events.s3notify import TenantRule
from moderator.replay.census import take_census
from moderator.replay.plan import RunPlan
from moderator.replay.reader import RangeConsumer
from moderator.replay.request import EventFilter, OffsetRange

TOPIC = "uploads"


class FakeMessage:
    """A delivered record (or, with `err`, a consumer error) as confluent-kafka shapes it."""

    def __init__(
        self,
        partition: int,
        offset: int,
        value: bytes | None = None,
        *,
        timestamp_ms: int | None = None,
        err: object = None,
    ) -> None:
        self._partition, self._offset, self._value = partition, offset, value
        self._timestamp = timestamp_ms
        self._err = err

    def error(self) -> object:
        return self._err

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        if self._timestamp is None:
            return (0, -1)  # TIMESTAMP_NOT_AVAILABLE
        return (TIMESTAMP_CREATE_TIME, self._timestamp)


class FakeRangeLog:
    """Test double of a confluent-kafka consumer over fixed per-partition logs.

    `logs[p]` maps each delivered offset to its value; every offset below `ends[p]` that is not
    in it is a transaction marker. `consume` walks the assigned, unpaused partitions in order
    from their positions: a record is delivered and counts against `num_messages`, a marker is
    stepped over silently. Before a partition is first fetched its position is OFFSET_INVALID,
    as librdkafka reports it.
    """

    def __init__(
        self,
        logs: dict[int, dict[int, bytes | None]],
        ends: dict[int, int] | None = None,
        *,
        committed: dict[int, int] | None = None,
    ) -> None:
        self.logs = logs
        self.ends = ends or {p: max(log, default=-1) + 1 for p, log in logs.items()}
        self.committed_offsets = dict(committed or {})
        self.positions: dict[int, int] = {}
        self.fetched: set[int] = set()
        self.assigned: list[TopicPartition] = []
        self.paused: set[int] = set()
        self.calls: list[str] = []
        self.injected: list[FakeMessage] = []  # handed out first by the next consume
        self.closed = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("assign")
        self.assigned = list(partitions)
        self.positions = {tp.partition: tp.offset for tp in partitions}
        self.fetched = set()
        self.paused = set()

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.calls.append("consume")
        out = self.injected[:num_messages]
        del self.injected[: len(out)]
        for p in sorted(self.positions):
            if p in self.paused:
                continue
            self.fetched.add(p)
            log, end = self.logs.get(p, {}), self.ends.get(p, 0)
            while len(out) < num_messages and self.positions[p] < end:
                offset = self.positions[p]
                self.positions[p] = offset + 1
                if offset in log:
                    out.append(FakeMessage(p, offset, log[offset], timestamp_ms=1000 + offset))
        return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                TOPIC,
                tp.partition,
                self.positions[tp.partition] if tp.partition in self.fetched else OFFSET_INVALID,
            )
            for tp in partitions
        ]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        return [
            TopicPartition(TOPIC, tp.partition, self.committed_offsets.get(tp.partition, -1001))
            for tp in partitions
        ]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.positions[partition.partition] = partition.offset

    def commit(
        self, message: Any = None, offsets: list[Any] | None = None, asynchronous: bool = True
    ) -> None:
        for tp in offsets or []:
            self.committed_offsets[tp.partition] = tp.offset

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def close(self) -> None:
        self.closed = True


def records(offsets: Iterable[int]) -> dict[int, bytes | None]:
    return {o: f"v{o}".encode() for o in offsets}


def reader(
    inner: FakeRangeLog, ranges: Sequence[OffsetRange]
) -> tuple[RangeConsumer, threading.Event]:
    finished = threading.Event()
    return RangeConsumer(inner, TOPIC, ranges, finished, timeout_s=1.0), finished


def read_all(consumer: RangeConsumer, finished: threading.Event, batch: int = 3) -> list[Any]:
    """Consume until finished (bounded, so a bug fails the test instead of hanging it)."""
    got: list[Any] = []
    for _ in range(1000):
        if finished.is_set():
            return got
        got += consumer.consume(batch, 0)
    raise AssertionError("the range consumer never finished")


def coords(messages: Iterable[Any]) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in messages]


def test_reads_each_range_from_its_start_to_before_its_end() -> None:
    inner = FakeRangeLog({0: records(range(20)), 1: records(range(20))})
    consumer, finished = reader(inner, [OffsetRange(0, 5, 8), OffsetRange(1, 0, 2)])
    consumer.subscribe([TOPIC])
    assert [(tp.partition, tp.offset) for tp in inner.assigned] == [(0, 5), (1, 0)]
    assert not finished.is_set()
    got = read_all(consumer, finished)
    assert coords(got) == [(0, 5), (0, 6), (0, 7), (1, 0), (1, 1)]
    assert consumer.done
    assert consumer.last_handed == {0: 7, 1: 1}
    assert consumer.resumed_from == {}


def test_never_hands_out_offsets_at_or_past_the_end() -> None:
    # A live topic: the inner consumer returns records past the range in the same batch.
    inner = FakeRangeLog({0: records(range(50))})
    consumer, finished = reader(inner, [OffsetRange(0, 10, 13)])
    consumer.subscribe([TOPIC])
    got = consumer.consume(100, 0)
    assert coords(got) == [(0, 10), (0, 11), (0, 12)]
    assert finished.is_set()
    assert consumer.last_handed == {0: 12}
    # Whatever the inner consumer still returns afterwards is dropped too.
    inner.injected = [FakeMessage(0, 13, b"late"), FakeMessage(0, 40, b"later")]
    assert consumer.consume(10, 0) == []


def test_records_of_other_partitions_are_never_handed_out() -> None:
    inner = FakeRangeLog({0: records(range(5))})
    consumer, _ = reader(inner, [OffsetRange(0, 0, 5)])
    consumer.subscribe([TOPIC])
    inner.injected = [FakeMessage(3, 0, b"stray")]
    got = consumer.consume(1, 0)
    assert got == []


def test_errors_pass_through_to_the_loop() -> None:
    inner = FakeRangeLog({0: records(range(5))})
    consumer, _ = reader(inner, [OffsetRange(0, 0, 5)])
    consumer.subscribe([TOPIC])
    failure = FakeMessage(0, -1, err="transport failure")
    inner.injected = [failure]
    assert consumer.consume(1, 0) == [failure]
    assert consumer.last_handed == {}


def test_resumes_at_the_committed_offset() -> None:
    inner = FakeRangeLog({0: records(range(20)), 1: records(range(20))}, committed={0: 7})
    consumer, finished = reader(inner, [OffsetRange(0, 5, 10), OffsetRange(1, 2, 4)])
    consumer.subscribe([TOPIC])
    assert [(tp.partition, tp.offset) for tp in inner.assigned] == [(0, 7), (1, 2)]
    assert consumer.resumed_from == {0: 7}
    assert coords(read_all(consumer, finished)) == [(0, 7), (0, 8), (0, 9), (1, 2), (1, 3)]


def test_a_resume_reports_the_offsets_already_committed() -> None:
    """What the run's earlier processes committed, clamped to the ranges, once at the start:
    the progress line counts it as done."""
    inner = FakeRangeLog({p: records(range(30)) for p in range(3)}, committed={0: 7, 1: 25})
    reported: list[int] = []
    ranges = [OffsetRange(0, 5, 10), OffsetRange(1, 5, 10), OffsetRange(2, 5, 10)]
    consumer = RangeConsumer(inner, TOPIC, ranges, threading.Event(), on_resumed=reported.append)
    consumer.subscribe([TOPIC])
    assert reported == [2 + 5]
    fresh: list[int] = []
    inner = FakeRangeLog({0: records(range(9))})
    RangeConsumer(inner, TOPIC, ranges[:1], threading.Event(), on_resumed=fresh.append).subscribe(
        [TOPIC]
    )
    assert fresh == []  # a new run has nothing committed: not called


def test_a_committed_offset_is_clamped_to_the_range() -> None:
    # Below the range (an earlier run of the same group id?) starts at the range's start; at or
    # past its end means the partition is done and is not assigned at all.
    inner = FakeRangeLog({p: records(range(30)) for p in range(3)}, committed={0: 2, 1: 25, 2: 10})
    consumer, finished = reader(
        inner, [OffsetRange(0, 5, 10), OffsetRange(1, 5, 10), OffsetRange(2, 5, 10)]
    )
    consumer.subscribe([TOPIC])
    assert consumer.resumed_from == {0: 5, 1: 10, 2: 10}
    assert [(tp.partition, tp.offset) for tp in inner.assigned] == [(0, 5)]
    assert coords(read_all(consumer, finished)) == [(0, o) for o in range(5, 10)]


def test_a_fully_committed_run_is_finished_at_once() -> None:
    inner = FakeRangeLog({0: records(range(10))}, committed={0: 10})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 10)])
    assigned: list[Any] = []
    consumer.subscribe([TOPIC], on_assign=lambda c, parts: assigned.extend(parts))
    assert finished.is_set()
    assert assigned == []
    assert consumer.consume(10, 0) == []


def test_empty_ranges_are_never_assigned() -> None:
    inner = FakeRangeLog({0: records(range(10)), 1: records(range(10)), 2: records(range(10))})
    consumer, finished = reader(
        inner, [OffsetRange(0, 4, 4), OffsetRange(1, 0, 2), OffsetRange(2, 9, 9)]
    )
    consumer.subscribe([TOPIC])
    assert [tp.partition for tp in inner.assigned] == [1]
    assert coords(read_all(consumer, finished)) == [(1, 0), (1, 1)]


def test_only_empty_ranges_finish_at_subscribe() -> None:
    inner = FakeRangeLog({0: {}})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 0)])
    consumer.subscribe([TOPIC])
    assert inner.assigned == []
    assert finished.is_set()
    assert consumer.done


def test_on_assign_gets_the_start_offsets() -> None:
    inner = FakeRangeLog({0: records(range(10)), 1: records(range(10))}, committed={1: 3})
    consumer, _ = reader(inner, [OffsetRange(0, 1, 5), OffsetRange(1, 0, 5)])
    seen: list[tuple[Any, list[Any]]] = []
    consumer.subscribe([TOPIC], on_assign=lambda c, parts: seen.append((c, parts)))
    assert len(seen) == 1
    assert seen[0][0] is consumer
    assert [(tp.topic, tp.partition, tp.offset) for tp in seen[0][1]] == [
        (TOPIC, 0, 1),
        (TOPIC, 1, 3),
    ]


def test_finishes_when_the_last_offsets_are_transaction_markers() -> None:
    # Offsets 5 and 6 exist (commit markers) but are never delivered: the last record handed
    # out is 4, and only the position says the range was read to its end.
    inner = FakeRangeLog({0: records(range(5))}, ends={0: 7})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 7)])
    consumer.subscribe([TOPIC])
    assert coords(consumer.consume(5, 0)) == [(0, o) for o in range(5)]
    assert not finished.is_set()  # the markers were not fetched yet
    assert consumer.consume(5, 0) == []
    assert finished.is_set()
    assert consumer.done
    assert consumer.last_handed == {0: 4}


def test_markers_inside_the_range_are_stepped_over() -> None:
    inner = FakeRangeLog({0: records([0, 1, 3, 4, 7])}, ends={0: 9})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 9)])
    consumer.subscribe([TOPIC])
    assert coords(read_all(consumer, finished, batch=1)) == [(0, o) for o in (0, 1, 3, 4, 7)]


def test_a_range_of_markers_only_finishes() -> None:
    inner = FakeRangeLog({0: {}}, ends={0: 3})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 3)])
    consumer.subscribe([TOPIC])
    assert not finished.is_set()
    assert read_all(consumer, finished) == []


def test_finished_waits_for_every_range() -> None:
    inner = FakeRangeLog({0: records(range(10)), 1: records(range(10))})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 2), OffsetRange(1, 0, 6)])
    consumer.subscribe([TOPIC])
    assert coords(consumer.consume(3, 0)) == [(0, 0), (0, 1)]  # and 0:2, dropped
    assert inner.paused == {0}
    assert not finished.is_set()
    assert not consumer.done
    rest = read_all(consumer, finished)
    assert coords(rest) == [(1, o) for o in range(6)]


def test_pauses_partitions_read_to_their_end() -> None:
    inner = FakeRangeLog({0: records(range(100)), 1: records(range(100))})
    consumer, _ = reader(inner, [OffsetRange(0, 0, 2), OffsetRange(1, 0, 50)])
    consumer.subscribe([TOPIC])
    consumer.consume(2, 0)
    assert inner.paused == {0}
    # The loop resuming every partition (end of backpressure) leaves a finished one paused.
    consumer.resume([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert inner.paused == {0}
    consumer.pause([TopicPartition(TOPIC, 1)])
    assert inner.paused == {0, 1}
    consumer.resume([TopicPartition(TOPIC, 1)])
    assert inner.paused == {0}


def test_seeking_back_reopens_a_finished_partition() -> None:
    # After an aborted checkpoint the loop rewinds to the last committed offsets.
    inner = FakeRangeLog({0: records(range(10)), 1: records(range(10))})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 3), OffsetRange(1, 0, 3)])
    consumer.subscribe([TOPIC])
    read_all(consumer, finished)
    assert consumer.done
    assert inner.paused == {0, 1}
    consumer.seek(TopicPartition(TOPIC, 0, 1))
    assert not consumer.done
    assert inner.paused == {1}
    assert coords(consumer.consume(10, 0)) == [(0, 1), (0, 2)]
    assert consumer.done


def test_seeking_to_the_end_does_not_reopen() -> None:
    inner = FakeRangeLog({0: records(range(10))})
    consumer, finished = reader(inner, [OffsetRange(0, 0, 3)])
    consumer.subscribe([TOPIC])
    read_all(consumer, finished)
    consumer.seek(TopicPartition(TOPIC, 0, 3))
    assert consumer.done
    assert inner.paused == {0}


def test_last_handed_is_the_highest_offset_per_partition() -> None:
    inner = FakeRangeLog({0: records(range(10))})
    consumer, _ = reader(inner, [OffsetRange(0, 0, 10)])
    consumer.subscribe([TOPIC])
    consumer.consume(4, 0)
    assert consumer.last_handed == {0: 3}
    consumer.seek(TopicPartition(TOPIC, 0, 1))  # a rewind does not lower it
    consumer.consume(1, 0)
    assert consumer.last_handed == {0: 3}


def test_calls_pass_through_to_the_inner_consumer() -> None:
    inner = FakeRangeLog({0: records(range(10))})
    consumer, _ = reader(inner, [OffsetRange(0, 0, 10)])
    consumer.subscribe([TOPIC])
    assert [(tp.partition, tp.offset) for tp in consumer.assignment()] == [(0, 0)]
    consumer.commit(offsets=[TopicPartition(TOPIC, 0, 4)], asynchronous=False)
    assert inner.committed_offsets == {0: 4}
    assert [tp.offset for tp in consumer.committed([TopicPartition(TOPIC, 0)])] == [4]
    assert consumer.consumer_group_metadata() == "group-metadata"
    consumer.close()
    assert inner.closed


# -- the dry run's census reads the same way ---------------------------------------------------


def upload(event_id: str, tenant: str) -> bytes:
    event = {"event_id": event_id, "tenant_id": tenant, "object": {"bucket": "b", "key": "k"}}
    return json.dumps(event).encode()


def test_census_counts_what_a_run_would_replay() -> None:
    log0: dict[int, bytes | None] = {
        0: upload("e0", "acme"),
        1: upload("e1", "kids"),
        2: b"{not json",
        3: upload("e3", "acme"),
        5: upload("e5", "news"),  # 4 is a marker
        6: upload("e6", "acme"),  # past the range
    }
    log1: dict[int, bytes | None] = {0: upload("f0", "acme"), 1: upload("f1", "acme")}
    inner = FakeRangeLog({0: log0, 1: log1}, ends={0: 7, 1: 2})
    plan = RunPlan(
        run_id="r1",
        created_at="2026-12-05T23:15:00Z",
        uploads_topic=TOPIC,
        output_topic="moderation.replay",
        ranges=(OffsetRange(0, 0, 6), OffsetRange(1, 1, 2)),
        event_filter=EventFilter(tenants=frozenset({"acme", "kids"})),
        range_text="offsets",
        lookup="offsets",
        policies_dir="policies",
        engine="fake",
        model=None,
    )
    census = take_census(inner, plan, TenantRule())
    assert census.offsets == {0: 6, 1: 1}
    assert dict(census.messages) == {0: 5, 1: 1}
    assert dict(census.events) == {0: 3, 1: 1}
    assert dict(census.tenants) == {"acme": 3, "kids": 1}
    assert census.in_range == {"acme", "kids", "news"}  # news: in the range, not kept
    assert census.malformed == 1
    assert census.filtered == 1
    assert inner.committed_offsets == {}  # a dry run commits nothing
