"""The in-memory broker implements Kafka's transaction, offset and group rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, KafkaError, KafkaException
from confluent_kafka import TopicPartition as TP
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.memory.consumer import MemoryConsumer
from moderator.ingest.memory.messages import FAULT_POINTS, FaultPoint, TxnState
from moderator.ingest.memory.producer import MemoryProducer
from moderator.ingest.ports import Consumer, Producer


def make_consumer(
    broker: MemoryBroker, group: str = "g", isolation: str = "read_committed", **extra: Any
) -> MemoryConsumer:
    config = {
        "group.id": group,
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **extra,
    }
    return broker.consumer(config)


def txn_producer(broker: MemoryBroker, tid: str = "tx-1") -> MemoryProducer:
    producer = broker.producer({"transactional.id": tid})
    producer.init_transactions()
    return producer


def drain(consumer: MemoryConsumer, rounds: int = 3) -> list[Any]:
    """Consume until `rounds` consecutive empty batches (rebalances settle in between)."""
    out: list[Any] = []
    empty = 0
    while empty < rounds:
        batch = consumer.consume(100, timeout=0)
        out.extend(batch)
        empty = 0 if batch else empty + 1
    return out


def values(messages: list[Any]) -> list[bytes | None]:
    return [m.value() for m in messages]


def subscribed(broker: MemoryBroker, topic: str, **kwargs: Any) -> MemoryConsumer:
    consumer = make_consumer(broker, **kwargs)
    consumer.subscribe([topic])
    return consumer


def kafka_error(exc: pytest.ExceptionInfo[KafkaException]) -> KafkaError:
    error = exc.value.args[0]
    assert isinstance(error, KafkaError)
    return error


def test_satisfies_ports() -> None:
    broker = MemoryBroker()
    consumer: Consumer = make_consumer(broker)
    producer: Producer = broker.producer({})
    assert consumer is not None and producer is not None


def test_message_accessors_and_delivery_callbacks() -> None:
    broker = MemoryBroker()
    delivered: list[tuple[Any, Any]] = []
    producer = broker.producer({})
    producer.produce(
        "t",
        b"v",
        key=b"k",
        headers=[("h", b"1")],
        timestamp=1234,
        on_delivery=lambda e, m: delivered.append((e, m)),
    )
    assert producer.flush() == 0
    assert len(delivered) == 1 and delivered[0][0] is None
    [message] = drain(subscribed(broker, "t"))
    assert message.error() is None
    assert (message.topic(), message.offset(), message.key(), message.value()) == (
        "t",
        0,
        b"k",
        b"v",
    )
    assert message.headers() == [("h", b"1")]
    assert message.timestamp() == (1, 1234)
    assert message.partition() == delivered[0][1].partition()


def test_keyed_records_go_to_one_partition_and_unkeyed_round_robin() -> None:
    broker = MemoryBroker(default_partitions=4)
    producer = broker.producer({})
    for i in range(8):
        producer.produce("t", b"x%d" % i, key=b"same")
        producer.produce("u", b"y%d" % i)
    assert len({r.partition for r in broker.records("t")}) == 1
    assert sorted(r.partition for r in broker.records("u")) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_committed_transaction_visible_to_read_committed() -> None:
    broker = MemoryBroker(default_partitions=1)
    producer = txn_producer(broker)
    producer.begin_transaction()
    producer.produce("out", b"a")
    producer.produce("out", b"b")
    producer.commit_transaction()
    assert values(drain(subscribed(broker, "out"))) == [b"a", b"b"]
    assert [r.state for r in broker.records("out")] == [TxnState.COMMITTED] * 2


def test_aborted_records_never_visible_to_read_committed() -> None:
    broker = MemoryBroker(default_partitions=1)
    producer = txn_producer(broker)
    producer.begin_transaction()
    producer.produce("out", b"aborted")
    producer.abort_transaction()
    producer.begin_transaction()
    producer.produce("out", b"kept")
    producer.commit_transaction()
    assert values(drain(subscribed(broker, "out"))) == [b"kept"]
    assert [r.value for r in broker.records("out")] == [b"kept"]
    uncommitted = subscribed(broker, "out", group="raw", isolation="read_uncommitted")
    assert values(drain(uncommitted)) == [b"aborted", b"kept"]


def test_open_transaction_holds_read_committed_readers_at_the_lso() -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.produce_plain("out", b"before")
    producer = txn_producer(broker)
    producer.begin_transaction()
    producer.produce("out", b"in-txn")
    broker.produce_plain("out", b"after")  # committed, but behind the open transaction
    reader = subscribed(broker, "out")
    assert values(drain(reader)) == [b"before"]
    assert broker.end_offset("out", 0) == 1
    assert values(drain(subscribed(broker, "out", group="raw", isolation="read_uncommitted"))) == [
        b"before",
        b"in-txn",
        b"after",
    ]
    producer.commit_transaction()
    assert values(drain(reader)) == [b"in-txn", b"after"]


def test_offsets_sent_to_a_transaction_are_stored_only_on_commit() -> None:
    broker = MemoryBroker(default_partitions=1)
    for i in range(3):
        broker.produce_plain("in", b"%d" % i)
    consumer = subscribed(broker, "in")
    assert len(drain(consumer)) == 3
    producer = txn_producer(broker)

    producer.begin_transaction()
    producer.produce("out", b"r")
    producer.send_offsets_to_transaction([TP("in", 0, 3)], consumer.consumer_group_metadata())
    assert broker.committed_offset("g", "in", 0) is None
    with pytest.raises(KafkaException) as unstable:  # pending offsets cannot be read yet
        consumer.committed([TP("in", 0)])
    assert kafka_error(unstable).retriable()
    producer.abort_transaction()
    assert broker.committed_offset("g", "in", 0) is None
    assert consumer.committed([TP("in", 0)])[0].offset == OFFSET_INVALID

    producer.begin_transaction()
    producer.produce("out", b"r")
    producer.send_offsets_to_transaction([TP("in", 0, 3)], consumer.consumer_group_metadata())
    producer.commit_transaction()
    assert broker.committed_offset("g", "in", 0) == 3
    assert consumer.committed([TP("in", 0)])[0].offset == 3


def test_pending_offsets_hold_back_a_new_read_committed_owner() -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.produce_plain("in", b"0")
    first = subscribed(broker, "in")
    drain(first)
    producer = txn_producer(broker)
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TP("in", 0, 1)], first.consumer_group_metadata())
    broker.evict(first)  # a zombie now: its transaction is still open
    second = subscribed(broker, "in")
    assert drain(second) == []  # not even from auto.offset.reset=earliest
    with pytest.raises(KafkaException) as zombie:
        producer.commit_transaction()
    assert kafka_error(zombie).txn_requires_abort()
    producer.abort_transaction()
    assert values(drain(second)) == [b"0"]


def test_init_transactions_fences_the_previous_producer_and_aborts_its_transaction() -> None:
    broker = MemoryBroker(default_partitions=1)
    old = txn_producer(broker, "same-id")
    old.begin_transaction()
    old.produce("out", b"zombie")
    reader = subscribed(broker, "out")
    assert drain(reader) == []
    new = txn_producer(broker, "same-id")
    assert broker.records("out", read_committed=False)[0].state is TxnState.ABORTED
    calls: list[Callable[[], None]] = [
        lambda: old.produce("out", b"late"),
        old.commit_transaction,
        old.abort_transaction,
        old.begin_transaction,
    ]
    for call in calls:
        with pytest.raises(KafkaException) as fenced:
            call()
        assert kafka_error(fenced).fatal()
        assert kafka_error(fenced).code() == KafkaError._FENCED
    new.begin_transaction()
    new.produce("out", b"fresh")
    new.commit_transaction()
    assert values(drain(reader)) == [b"fresh"]


def test_wrong_state_usage_raises() -> None:
    broker = MemoryBroker()
    producer = broker.producer({"transactional.id": "t"})
    with pytest.raises(KafkaException) as before_init:
        producer.begin_transaction()
    assert kafka_error(before_init).code() == KafkaError._STATE
    producer.init_transactions()
    with pytest.raises(KafkaException) as outside:
        producer.produce("out", b"x")
    assert kafka_error(outside).code() == KafkaError._STATE
    assert not kafka_error(outside).fatal()
    for call in (producer.commit_transaction, producer.abort_transaction):
        with pytest.raises(KafkaException):
            call()
    producer.begin_transaction()
    with pytest.raises(KafkaException):
        producer.begin_transaction()
    plain = broker.producer({})
    with pytest.raises(KafkaException) as not_configured:
        plain.init_transactions()
    assert kafka_error(not_configured).code() == KafkaError._NOT_CONFIGURED
    plain.produce("out", b"plain")
    assert [r.state for r in broker.records("out")] == [TxnState.PLAIN]


def test_plain_commit_committed_seek_and_position() -> None:
    broker = MemoryBroker(default_partitions=1)
    for i in range(5):
        broker.produce_plain("in", b"%d" % i)
    consumer = subscribed(broker, "in")
    messages = drain(consumer)
    assert consumer.position([TP("in", 0)])[0].offset == 5
    consumer.commit(message=messages[1], asynchronous=False)
    assert broker.committed_offset("g", "in", 0) == 2
    assert consumer.committed([TP("in", 0)])[0].offset == 2
    consumer.commit(offsets=[TP("in", 0, 4)])
    assert broker.committed_offset("g", "in", 0) == 4
    consumer.seek(TP("in", 0, 1))
    assert values(drain(consumer)) == [b"1", b"2", b"3", b"4"]
    consumer.seek(TP("in", 0, OFFSET_BEGINNING))
    assert len(drain(consumer)) == 5
    consumer.commit()
    assert broker.committed_offset("g", "in", 0) == 5
    with pytest.raises(KafkaException):
        consumer.seek(TP("other", 0, 0))
    consumer.close()
    restarted = subscribed(broker, "in")
    broker.produce_plain("in", b"5")
    assert values(drain(restarted)) == [b"5"]


def test_auto_offset_reset_latest_and_assign_offsets() -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.produce_plain("in", b"old")
    latest = subscribed(broker, "in", group="latest", **{"auto.offset.reset": "latest"})
    drain(latest)
    broker.produce_plain("in", b"new")
    assert values(drain(latest)) == [b"new"]

    def rewind(consumer: Any, partitions: list[TP]) -> None:
        for tp in partitions:
            tp.offset = 1

    chooser = make_consumer(broker, group="chooser")
    chooser.subscribe(["in"], on_assign=rewind)
    assert values(drain(chooser)) == [b"new"]


def test_enable_auto_commit_rejected() -> None:
    with pytest.raises(ValueError):
        MemoryBroker().consumer({"group.id": "g", "enable.auto.commit": True})


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, list[tuple[str, int]]]] = []
        self.inside_consume = False
        self.outside: list[str] = []

    def callback(self, kind: str) -> Any:
        def record(consumer: Any, partitions: list[TP]) -> None:
            self.events.append((kind, sorted((tp.topic, tp.partition) for tp in partitions)))

        return record

    def subscribe(self, consumer: MemoryConsumer, topics: list[str], lost: bool = True) -> None:
        consumer.subscribe(
            topics,
            on_assign=self.callback("assign"),
            on_revoke=self.callback("revoke"),
            on_lost=self.callback("lost") if lost else None,
        )


def test_two_members_split_partitions_and_rebalance_incrementally() -> None:
    broker = MemoryBroker(default_partitions=4)
    a_rec, b_rec = Recorder(), Recorder()
    a, b = make_consumer(broker), make_consumer(broker)
    a_rec.subscribe(a, ["in"])
    assert a_rec.events == []  # callbacks run inside consume()
    a.consume(timeout=0)
    assert a_rec.events == [("assign", [("in", 0), ("in", 1), ("in", 2), ("in", 3)])]

    b_rec.subscribe(b, ["in"])
    b.consume(timeout=0)
    assert b_rec.events == []  # a still owns everything: nothing moves before a revokes
    a.consume(timeout=0)
    revoked = a_rec.events[-1]
    assert revoked[0] == "revoke" and len(revoked[1]) == 2
    b.consume(timeout=0)
    assert b_rec.events == [("assign", revoked[1])]
    owned_a = {(tp.topic, tp.partition) for tp in a.assignment()}
    owned_b = {(tp.topic, tp.partition) for tp in b.assignment()}
    assert owned_a.isdisjoint(owned_b) and len(owned_a | owned_b) == 4

    for p in range(4):
        broker.produce_plain("in", b"%d" % p, partition=p)
    got_a, got_b = drain(a), drain(b)
    assert {m.partition() for m in got_a} == {p for _, p in owned_a}
    assert {m.partition() for m in got_b} == {p for _, p in owned_b}

    b.close()
    assert b_rec.events[-1] == ("revoke", revoked[1])
    a.consume(timeout=0)
    assert a_rec.events[-1] == ("assign", revoked[1])  # only the partitions that changed
    assert len(a.assignment()) == 4


def test_pause_and_resume_keep_the_assignment() -> None:
    broker = MemoryBroker(default_partitions=2)
    consumer = subscribed(broker, "in")
    consumer.consume(timeout=0)
    broker.produce_plain("in", b"p0", partition=0)
    broker.produce_plain("in", b"p1", partition=1)
    consumer.pause([TP("in", 0)])
    assert values(drain(consumer)) == [b"p1"]
    assert len(consumer.assignment()) == 2
    consumer.resume([TP("in", 0)])
    assert values(drain(consumer)) == [b"p0"]


@pytest.mark.parametrize("with_on_lost", [True, False])
def test_evicted_member_sees_its_partitions_lost(with_on_lost: bool) -> None:
    broker = MemoryBroker(default_partitions=2)
    recorder = Recorder()
    consumer = make_consumer(broker)
    recorder.subscribe(consumer, ["in"], lost=with_on_lost)
    consumer.consume(timeout=0)
    metadata = consumer.consumer_group_metadata()
    old_member = consumer.memberid()
    broker.evict(consumer)
    assert recorder.events[-1][0] == "assign"
    consumer.consume(timeout=0)
    kind = "lost" if with_on_lost else "revoke"
    assert recorder.events[1] == (kind, [("in", 0), ("in", 1)])
    assert recorder.events[2] == ("assign", [("in", 0), ("in", 1)])  # rejoined as a new member
    assert consumer.memberid() != old_member
    producer = txn_producer(broker)
    producer.begin_transaction()
    with pytest.raises(KafkaException) as zombie:
        producer.send_offsets_to_transaction([TP("in", 0, 1)], metadata)
    assert kafka_error(zombie).txn_requires_abort()


def test_stale_generation_fails_send_offsets_and_commit() -> None:
    broker = MemoryBroker(default_partitions=2)
    broker.produce_plain("in", b"x", partition=0)
    a = subscribed(broker, "in")
    drain(a)
    producer = txn_producer(broker)

    producer.begin_transaction()
    subscribed(broker, "in")  # a new member joins: a's generation is stale until it consumes
    with pytest.raises(KafkaException) as stale:
        producer.send_offsets_to_transaction([TP("in", 0, 1)], a.consumer_group_metadata())
    assert kafka_error(stale).code() == KafkaError.ILLEGAL_GENERATION
    assert kafka_error(stale).txn_requires_abort()
    with pytest.raises(KafkaException) as must_abort:
        producer.commit_transaction()
    assert kafka_error(must_abort).txn_requires_abort()
    producer.abort_transaction()

    a.consume(timeout=0)  # rejoins the current generation
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TP("in", 0, 1)], a.consumer_group_metadata())
    broker.evict(a)  # evicted between send_offsets and commit
    with pytest.raises(KafkaException) as evicted:
        producer.commit_transaction()
    assert kafka_error(evicted).code() == KafkaError.UNKNOWN_MEMBER_ID
    producer.abort_transaction()
    assert broker.committed_offset("g", "in", 0) is None


def test_inject_rejects_unknown_points() -> None:
    with pytest.raises(ValueError):
        MemoryBroker().inject("nowhere", RuntimeError())  # type: ignore[arg-type]  # on purpose


@pytest.mark.parametrize(
    "point", ["begin_transaction", "produce", "send_offsets_to_transaction", "commit_transaction"]
)
def test_fault_raises_at_the_named_point_once(point: FaultPoint) -> None:
    broker = MemoryBroker(default_partitions=1)
    consumer = subscribed(broker, "in")
    consumer.consume(timeout=0)
    producer = txn_producer(broker)
    broker.inject(point, RuntimeError(point))
    steps: dict[str, Callable[[], None]] = {
        "begin_transaction": producer.begin_transaction,
        "produce": lambda: producer.produce("out", b"x"),
        "send_offsets_to_transaction": lambda: producer.send_offsets_to_transaction(
            [TP("in", 0, 0)], consumer.consumer_group_metadata()
        ),
        "commit_transaction": producer.commit_transaction,
    }
    for name, step in steps.items():
        if name == point:
            with pytest.raises(RuntimeError, match=point):
                step()
        step()  # the fault fires once: the retry goes through
    assert values(drain(subscribed(broker, "out", group="reader"))) == [b"x"]


def test_abortable_fault_at_commit_requires_abort() -> None:
    broker = MemoryBroker(default_partitions=1)
    producer = txn_producer(broker)
    abortable = KafkaException(KafkaError(KafkaError._TIMED_OUT, "t", txn_requires_abort=True))
    broker.inject("commit_transaction", abortable)
    producer.begin_transaction()
    producer.produce("out", b"x")
    with pytest.raises(KafkaException):
        producer.commit_transaction()
    with pytest.raises(KafkaException) as still:
        producer.commit_transaction()
    assert kafka_error(still).txn_requires_abort()
    producer.abort_transaction()
    assert broker.records("out") == []


def test_fatal_fault_leaves_the_transaction_open_until_a_successor_inits() -> None:
    broker = MemoryBroker(default_partitions=1)
    producer = txn_producer(broker, "crash")
    producer.begin_transaction()
    producer.produce("out", b"x")
    fatal = KafkaException(KafkaError(KafkaError._FENCED, "boom", fatal=True))
    broker.inject("send_offsets_to_transaction", fatal)
    with pytest.raises(KafkaException):
        producer.send_offsets_to_transaction([], None)
    with pytest.raises(KafkaException) as again:
        producer.abort_transaction()
    assert kafka_error(again).fatal()
    assert broker.end_offset("out", 0) == 0
    txn_producer(broker, "crash")
    assert broker.end_offset("out", 0) == 1 and broker.records("out") == []


def test_fault_after_commit_transaction_took_effect() -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.produce_plain("in", b"0")
    consumer = subscribed(broker, "in")
    drain(consumer)
    producer = txn_producer(broker)
    broker.inject(
        "after_commit_transaction",
        KafkaException(KafkaError(KafkaError._TIMED_OUT, "t", retriable=True)),
    )
    producer.begin_transaction()
    producer.produce("out", b"x")
    producer.send_offsets_to_transaction([TP("in", 0, 1)], consumer.consumer_group_metadata())
    with pytest.raises(KafkaException):
        producer.commit_transaction()
    assert [r.value for r in broker.records("out")] == [b"x"]
    assert broker.committed_offset("g", "in", 0) == 1
    producer.commit_transaction()  # the retry is idempotent
    producer.begin_transaction()


def test_consumer_fault_points() -> None:
    broker = MemoryBroker()
    consumer = subscribed(broker, "in")
    assert set(FAULT_POINTS) >= {"consume", "commit"}
    broker.inject("consume", RuntimeError("consume"), times=2)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            consumer.consume(timeout=0)
    consumer.consume(timeout=0)
    broker.inject("commit", RuntimeError("commit"))
    with pytest.raises(RuntimeError):
        consumer.commit()


def test_closed_consumer_raises() -> None:
    consumer = subscribed(MemoryBroker(), "in")
    consumer.close()
    with pytest.raises(RuntimeError):
        consumer.consume(timeout=0)


# One operation of a random interleaving: (kind, producer index, partition).
ops = st.lists(
    st.tuples(
        st.sampled_from(["produce", "produce", "commit", "abort", "plain", "read"]),
        st.integers(0, 2),
        st.integers(0, 1),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, finish=st.lists(st.booleans(), min_size=3, max_size=3))
def test_read_committed_sees_exactly_the_committed_records_in_order(
    ops: list[tuple[str, int, int]], finish: list[bool]
) -> None:
    broker = MemoryBroker(default_partitions=2)
    producers = [txn_producer(broker, f"p{i}") for i in range(3)]
    in_txn = [False] * 3
    pending: list[list[bytes]] = [[], [], []]
    committed: set[bytes] = set()
    reader = subscribed(broker, "out")
    seen: list[Any] = []

    def end(i: int, commit: bool) -> None:
        if not in_txn[i]:
            return
        if commit:
            producers[i].commit_transaction()
            committed.update(pending[i])
        else:
            producers[i].abort_transaction()
        in_txn[i], pending[i] = False, []

    for n, (kind, i, partition) in enumerate(ops):
        value = b"%d" % n
        if kind == "produce":
            if not in_txn[i]:
                producers[i].begin_transaction()
                in_txn[i] = True
            producers[i].produce("out", value, partition=partition)
            pending[i].append(value)
        elif kind == "plain":
            broker.produce_plain("out", value, partition=partition)
            committed.add(value)
        elif kind == "read":
            seen.extend(reader.consume(5, timeout=0))
        else:
            end(i, kind == "commit")
        assert {m.value() for m in seen} <= committed
    for i, commit in enumerate(finish):
        end(i, commit)
    seen.extend(drain(reader))

    by_partition: dict[int, list[bytes | None]] = {0: [], 1: []}
    for m in seen:
        by_partition[m.partition()].append(m.value())
    for p, got in by_partition.items():
        log = [r.value for r in broker.records("out", read_committed=False) if r.partition == p]
        assert got == [v for v in log if v in committed]  # log order, nothing else
    assert sorted(committed) == sorted(m.value() or b"" for m in seen)
    assert sorted(r.value or b"" for r in broker.records("out")) == sorted(committed)


def test_checkpoint_in_on_revoke_hands_over_at_the_committed_offsets() -> None:
    broker = MemoryBroker(default_partitions=2)
    for p in range(2):
        for i in range(3):
            broker.produce_plain("in", b"%d-%d" % (p, i), partition=p)
    producer = txn_producer(broker)
    a = make_consumer(broker)
    positions: dict[int, int] = {}

    def checkpoint(consumer: Any, partitions: list[TP]) -> None:
        producer.send_offsets_to_transaction(
            [TP("in", p, o) for p, o in positions.items()], consumer.consumer_group_metadata()
        )
        producer.commit_transaction()
        producer.begin_transaction()

    a.subscribe(["in"], on_revoke=checkpoint)
    producer.begin_transaction()
    for message in drain(a):
        producer.produce("out", message.value())
        positions[message.partition()] = message.offset() + 1
    b = subscribed(broker, "in")
    b.consume(timeout=0)
    a.consume(timeout=0)  # revokes one partition, committing everything processed so far
    assert {broker.committed_offset("g", "in", p) for p in range(2)} == {3}
    assert drain(b) == []  # the new owner starts after what a already produced
    assert len(b.assignment()) == 1
    assert len(broker.records("out")) == 6


def test_fault_after_skipped_calls() -> None:
    broker = MemoryBroker(default_partitions=1)
    producer = txn_producer(broker)
    broker.inject("begin_transaction", RuntimeError("third"), skip=2)
    for _ in range(2):
        producer.begin_transaction()
        producer.abort_transaction()
    with pytest.raises(RuntimeError, match="third"):
        producer.begin_transaction()
    producer.begin_transaction()
