"""In-memory Kafka-like broker with the real transaction rules, for tests of the checkpoint.

librdkafka's mock cluster shows aborted records to `read_committed` readers and discards offsets
sent with a transaction, so the exactly-once protocol is proven against this fake instead. Its
consumers and producers satisfy `moderator.ingest.ports` and raise the real confluent-kafka
`KafkaException(KafkaError(...))` with the flags the checkpoint inspects.

Rules implemented (KIP-98 / KIP-447):
- Transactional records stay open until commit or abort. `read_committed` readers never see
  aborted records and never read past the first open record of a partition (the last stable
  offset); `read_uncommitted` readers see everything.
- Offsets sent with a transaction are pending; `commit_transaction` first commits the records,
  then stores the offsets. `abort_transaction` discards both. While offsets are pending, a
  `read_committed` member cannot read the group's committed offset (UNSTABLE_OFFSET_COMMIT).
- `init_transactions` fences the previous producer with the same `transactional.id` (its later
  calls raise a fatal error) and aborts its open transaction.
- Offsets sent with stale group metadata (the member left, was evicted, or the group rebalanced
  since the member's last `consume`) are refused with an abortable error, at
  `send_offsets_to_transaction` and again at `commit_transaction` (zombie fencing).
- Consumer groups rebalance cooperatively: callbacks run inside `consume()` and receive only the
  partitions that change; a partition moves to its new owner once the old one has revoked it.

Differences from Kafka: control markers take no offsets, `consume(timeout=-1)` never blocks for
long (it returns [] after a short sleep), and there is no retention or transaction timeout.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, get_args

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from moderator.ingest.ports import Headers, RebalanceCallback

# Fault points for `MemoryBroker.inject`. Each is checked when the named method starts, except
# "after_commit_transaction", which fires once a commit has taken effect (the caller sees an
# error although records and offsets are committed; calling commit_transaction again succeeds).
FaultPoint = Literal[
    "init_transactions",
    "begin_transaction",
    "produce",
    "send_offsets_to_transaction",
    "commit_transaction",
    "after_commit_transaction",
    "abort_transaction",
    "consume",
    "commit",
]
FAULT_POINTS: frozenset[str] = frozenset(get_args(FaultPoint))

_TP = tuple[str, int]


class TxnState(Enum):
    PLAIN = "plain"
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass
class StoredRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int
    state: TxnState = TxnState.PLAIN
    producer_id: int | None = None


class MemoryMessage:
    """A consumed or delivered record with confluent-kafka's `Message` accessors."""

    __slots__ = ("record",)

    def __init__(self, record: StoredRecord) -> None:
        self.record = record

    def error(self) -> KafkaError | None:
        return None

    def topic(self) -> str:
        return self.record.topic

    def partition(self) -> int:
        return self.record.partition

    def offset(self) -> int:
        return self.record.offset

    def key(self) -> bytes | None:
        return self.record.key

    def value(self) -> bytes | None:
        return self.record.value

    def headers(self) -> Headers | None:
        return self.record.headers

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self.record.timestamp_ms)


@dataclass(frozen=True)
class GroupMetadata:
    """Opaque group metadata for `send_offsets_to_transaction`: who sent it, and when."""

    group_id: str
    member_id: str
    generation: int


@dataclass
class _Group:
    members: dict[str, MemoryConsumer] = field(default_factory=dict)  # in join order
    generation: int = 0
    target: dict[str, set[_TP]] = field(default_factory=dict)
    owner: dict[_TP, str] = field(default_factory=dict)
    committed: dict[_TP, int] = field(default_factory=dict)


def _error(
    code: int, reason: str, *, fatal: bool = False, retriable: bool = False, abort: bool = False
) -> KafkaException:
    return KafkaException(
        KafkaError(code, reason, fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


def _tps(keys: Sequence[_TP]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in keys]


def _pick_partition(key: bytes | None, count: int, counter: int) -> int:
    """Stable hash of the key, else round-robin by `counter`."""
    return (zlib.crc32(key) if key is not None else counter) % count


class MemoryBroker:
    """Topics, consumer groups and transactions, guarded by one lock."""

    def __init__(self, default_partitions: int = 4) -> None:
        self.default_partitions = default_partitions
        self.lock = threading.RLock()
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._groups: dict[str, _Group] = {}
        self._txn_owners: dict[str, MemoryProducer] = {}
        self._faults: dict[str, list[BaseException | None]] = {}
        self._unkeyed: dict[str, int] = {}  # round-robin counters of produce_plain
        self._ids = 0

    # -- public API ------------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int) -> None:
        with self.lock:
            if name in self._logs and len(self._logs[name]) != partitions:
                raise ValueError(f"topic {name} exists with {len(self._logs[name])} partitions")
            self._logs.setdefault(name, [[] for _ in range(partitions)])

    def consumer(self, config: dict[str, Any]) -> MemoryConsumer:
        return MemoryConsumer(self, config)

    def producer(self, config: dict[str, Any]) -> MemoryProducer:
        return MemoryProducer(self, config)

    def records(self, topic: str, read_committed: bool = True) -> list[StoredRecord]:
        """What a reader from the start would see: partition by partition, in offset order."""
        with self.lock:
            return [
                r
                for p in range(len(self._partitions(topic)))
                for r in self._log(topic, p)[: self.end_offset(topic, p, read_committed)]
                if not (read_committed and r.state is TxnState.ABORTED)
            ]

    def committed_offset(self, group: str, topic: str, partition: int) -> int | None:
        with self.lock:
            return self._group(group).committed.get((topic, partition))

    def end_offset(self, topic: str, partition: int, read_committed: bool = True) -> int:
        """The last stable offset for read_committed, else the high watermark."""
        with self.lock:
            end = len(self._log(topic, partition))
            if not read_committed:
                return end
            firsts = [p.first_open.get((topic, partition)) for p in self._txn_owners.values()]
            return min([f for f in firsts if f is not None], default=end)

    def produce_plain(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> StoredRecord:
        """Append a non-transactional record (seeding input)."""
        with self.lock:
            if partition is None:
                count = self._unkeyed.get(topic, 0)
                partition = _pick_partition(key, len(self._partitions(topic)), count)
                self._unkeyed[topic] = count + (key is None)
            return self._append(StoredRecord(topic, partition, -1, key, value, headers, 0))

    def evict(self, consumer: MemoryConsumer) -> None:
        """Kick a member out of its group; it sees its partitions lost at its next consume()."""
        with self.lock:
            if consumer.member_id is None:
                return
            self._leave(consumer)
            consumer.evicted = True

    def inject(self, point: FaultPoint, exc: BaseException, times: int = 1, skip: int = 0) -> None:
        """Let `skip` calls reaching `point` pass, then raise `exc` at the next `times` calls.

        Injections at one point queue up behind each other (see FAULT_POINTS for the points).
        """
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {sorted(FAULT_POINTS)}")
        with self.lock:
            self._faults.setdefault(point, []).extend([None] * skip + [exc] * times)

    # -- internals -------------------------------------------------------------------------------
    def next_id(self) -> int:
        with self.lock:
            self._ids += 1
            return self._ids

    def take_fault(self, point: FaultPoint) -> BaseException | None:
        with self.lock:
            queue = self._faults.get(point)
            return queue.pop(0) if queue else None

    def _partitions(self, topic: str) -> list[list[StoredRecord]]:
        if topic not in self._logs:
            self.create_topic(topic, self.default_partitions)
        return self._logs[topic]

    def _log(self, topic: str, partition: int) -> list[StoredRecord]:
        logs = self._partitions(topic)
        if not 0 <= partition < len(logs):
            raise _error(KafkaError._UNKNOWN_PARTITION, f"{topic} has no partition {partition}")
        return logs[partition]

    def _append(self, record: StoredRecord) -> StoredRecord:
        log = self._log(record.topic, record.partition)
        record.offset = len(log)
        record.headers = list(record.headers) if record.headers is not None else None
        record.timestamp_ms = record.timestamp_ms or int(time.time() * 1000)
        record.state = TxnState.PLAIN if record.producer_id is None else TxnState.OPEN
        log.append(record)
        return record

    def has_pending_offsets(self, group: str, tp: _TP) -> bool:
        return any((group, *tp) in p.pending for p in self._txn_owners.values())

    def _group(self, group_id: str) -> _Group:
        return self._groups.setdefault(group_id, _Group())

    def group_of(self, consumer: MemoryConsumer) -> _Group:
        return self._group(consumer.group_id)

    def join(self, consumer: MemoryConsumer) -> None:
        for topic in consumer.topics:
            self._partitions(topic)
        consumer.member_id = f"{consumer.group_id}-member-{self.next_id()}"
        self.group_of(consumer).members[consumer.member_id] = consumer
        self._rebalance(consumer.group_id)

    def _leave(self, consumer: MemoryConsumer) -> None:
        group = self.group_of(consumer)
        group.members.pop(consumer.member_id or "", None)
        for tp in [tp for tp, m in group.owner.items() if m == consumer.member_id]:
            del group.owner[tp]
        consumer.member_id = None
        self._rebalance(consumer.group_id)

    def _rebalance(self, group_id: str) -> None:
        """New generation and target assignment: each topic's partitions dealt round-robin."""
        group = self._group(group_id)
        group.generation += 1
        group.target = {m: set() for m in group.members}
        topics = sorted({t for c in group.members.values() for t in c.topics})
        for topic in topics:
            eligible = [m for m, c in group.members.items() if topic in c.topics]
            for p in range(len(self._partitions(topic))):
                group.target[eligible[p % len(eligible)]].add((topic, p))

    def check_metadata(self, metadata: Any) -> GroupMetadata:
        if not isinstance(metadata, GroupMetadata):
            raise _error(KafkaError._INVALID_ARG, "group metadata is not from this broker")
        group = self._group(metadata.group_id)
        if metadata.member_id not in group.members:
            raise _error(KafkaError.UNKNOWN_MEMBER_ID, "member left the group", abort=True)
        if metadata.generation != group.generation:
            raise _error(KafkaError.ILLEGAL_GENERATION, "stale group generation", abort=True)
        return metadata


class MemoryConsumer:
    """A group member reading from a `MemoryBroker` (see `moderator.ingest.ports.Consumer`)."""

    def __init__(self, broker: MemoryBroker, config: dict[str, Any]) -> None:
        if str(config.get("enable.auto.commit", "false")).lower() != "false":
            raise ValueError("MemoryConsumer supports enable.auto.commit=false only")
        reset = config.get("auto.offset.reset", "latest")
        if reset not in ("earliest", "smallest", "beginning", "latest", "largest", "end"):
            raise ValueError(f"unsupported auto.offset.reset {reset!r}")
        self.broker = broker
        self.group_id: str = config["group.id"]
        self.read_committed = config.get("isolation.level", "read_uncommitted") == "read_committed"
        self.earliest = reset in ("earliest", "smallest", "beginning")
        self.topics: list[str] = []
        self.member_id: str | None = None
        self.evicted = False
        self._generation = -1
        self._positions: dict[_TP, int | None] = {}  # None: not yet resolved
        self._paused: set[_TP] = set()
        self._callbacks: dict[str, RebalanceCallback | None] = {}
        self._closed = False
        self._rotation = 0

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        self._check_open()
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        with self.broker.lock:
            self.topics = list(topics)
            if self.member_id is None:
                self.broker.join(self)
            else:
                self.broker._rebalance(self.group_id)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[MemoryMessage]:
        self._check_open()
        fault = self.broker.take_fault("consume")
        if fault is not None:
            raise fault
        self._reconcile()
        with self.broker.lock:
            messages = self._fetch(num_messages)
        if not messages and timeout != 0:
            time.sleep(min(timeout, 0.01) if timeout > 0 else 0.01)
        return messages

    def pause(self, partitions: list[TopicPartition]) -> None:
        with self.broker.lock:
            self._paused |= {(tp.topic, tp.partition) for tp in partitions} & set(self._positions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        with self.broker.lock:
            self._paused -= {(tp.topic, tp.partition) for tp in partitions}

    def assignment(self) -> list[TopicPartition]:
        with self.broker.lock:
            return _tps(list(self._positions))

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        with self.broker.lock:
            group = self.broker.group_of(self)
            out = []
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if self.read_committed and self.broker.has_pending_offsets(self.group_id, key):
                    raise _error(
                        KafkaError.UNSTABLE_OFFSET_COMMIT, "offsets pending", retriable=True
                    )
                offset = group.committed.get(key, OFFSET_INVALID)
                out.append(TopicPartition(tp.topic, tp.partition, offset))
            return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        with self.broker.lock:
            out = []
            for tp in partitions:
                position = self._positions.get((tp.topic, tp.partition))
                offset = OFFSET_INVALID if position is None else position
                out.append(TopicPartition(tp.topic, tp.partition, offset))
            return out

    def seek(self, partition: TopicPartition) -> None:
        with self.broker.lock:
            key = (partition.topic, partition.partition)
            if key not in self._positions:
                raise _error(KafkaError._STATE, f"{key} is not assigned")
            self._positions[key] = self._start_offset(key, partition.offset)

    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        self._check_open()
        fault = self.broker.take_fault("commit")
        if fault is not None:
            raise fault
        with self.broker.lock:
            if self.member_id is None:
                raise _error(KafkaError.UNKNOWN_MEMBER_ID, "not a member of the group")
            if message is not None:
                stored = {(message.topic(), message.partition()): message.offset() + 1}
            elif offsets is not None:
                stored = {(tp.topic, tp.partition): tp.offset for tp in offsets}
            else:
                stored = {k: v for k, v in self._positions.items() if v is not None}
            group = self.broker.group_of(self)
            group.committed.update({k: v for k, v in stored.items() if v >= 0})
        result = [TopicPartition(t, p, o) for (t, p), o in stored.items()]
        return None if asynchronous else result

    def consumer_group_metadata(self) -> GroupMetadata:
        return GroupMetadata(self.group_id, self.member_id or "", self._generation)

    def memberid(self) -> str | None:
        return self.member_id

    def close(self) -> None:
        if self._closed:
            return
        self._generation = self.broker.group_of(self).generation  # still a member until it leaves
        self._call("lost" if self.evicted else "revoke", list(self._positions))
        with self.broker.lock:
            self._positions.clear()
            if self.member_id is not None:
                self.broker._leave(self)
            self._closed = True

    # -- internals -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def _call(self, kind: str, keys: list[_TP]) -> None:
        callback = self._callbacks.get(kind)
        if kind == "lost" and callback is None:
            callback = self._callbacks.get("revoke")
        if keys and callback is not None:
            callback(self, _tps(keys))

    def _reconcile(self) -> None:
        """Apply the group's target assignment; callbacks run without the broker lock held."""
        with self.broker.lock:
            evicted, lost = self.evicted, list(self._positions)
        if evicted:
            self._call("lost", lost)
            with self.broker.lock:
                self._positions.clear()
                self._paused.clear()
                self.evicted = False
        with self.broker.lock:
            if self.member_id is None and self.topics:
                self.broker.join(self)
            group = self.broker.group_of(self)
            # The member has joined the new generation when it learns what to give up, so a
            # checkpoint taken in on_revoke is accepted (cooperative protocol, KIP-447).
            self._generation = group.generation
            target = group.target.get(self.member_id or "", set())
            revoked = [tp for tp in self._positions if tp not in target]
        self._call("revoke", revoked)
        with self.broker.lock:
            group = self.broker.group_of(self)
            for tp in revoked:
                self._positions.pop(tp, None)
                self._paused.discard(tp)
                if group.owner.get(tp) == self.member_id:
                    del group.owner[tp]
            assigned = [
                tp
                for tp in sorted(target)
                if tp not in self._positions
                and group.owner.get(tp, self.member_id) == self.member_id
            ]
            for tp in assigned:
                group.owner[tp] = self.member_id or ""
                self._positions[tp] = None
        on_assign = self._callbacks.get("assign")
        if assigned and on_assign is not None:
            partitions = _tps(assigned)
            on_assign(self, partitions)
            with self.broker.lock:  # like librdkafka, offsets set in on_assign are start offsets
                for part in partitions:
                    key = (part.topic, part.partition)
                    if part.offset != OFFSET_INVALID and key in self._positions:
                        self._positions[key] = self._start_offset(key, part.offset)

    def _start_offset(self, key: _TP, offset: int) -> int | None:
        if offset == OFFSET_BEGINNING:
            return 0
        if offset == OFFSET_END:
            return self.broker.end_offset(*key, read_committed=self.read_committed)
        return offset if offset >= 0 else None

    def _resolve(self, key: _TP) -> int | None:
        position = self._positions[key]
        if position is not None:
            return position
        if self.read_committed and self.broker.has_pending_offsets(self.group_id, key):
            return None  # wait until the transaction holding offsets for it ends
        committed = self.broker.group_of(self).committed.get(key)
        if committed is not None:
            position = committed
        elif self.earliest:
            position = 0
        else:
            position = self.broker.end_offset(*key, read_committed=self.read_committed)
        self._positions[key] = position
        return position

    def _fetch(self, limit: int) -> list[MemoryMessage]:
        messages: list[MemoryMessage] = []
        keys = list(self._positions)
        self._rotation = (self._rotation + 1) % max(len(keys), 1)
        for key in keys[self._rotation :] + keys[: self._rotation]:
            position = self._resolve(key)
            if key in self._paused or position is None:
                continue
            log = self.broker._log(*key)
            end = self.broker.end_offset(*key, read_committed=self.read_committed)
            while position < end and len(messages) < limit:
                record = log[position]
                position += 1
                if not (self.read_committed and record.state is TxnState.ABORTED):
                    messages.append(MemoryMessage(record))
            self._positions[key] = position
        return messages


class _Txn(Enum):
    UNINIT = "uninitialized"
    READY = "ready"
    IN_TXN = "in transaction"
    ABORTABLE = "abortable error"
    FATAL = "fatal error"


class MemoryProducer:
    """A producer writing to a `MemoryBroker` (see `moderator.ingest.ports.Producer`)."""

    def __init__(self, broker: MemoryBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.transactional_id: str | None = config.get("transactional.id")
        self.producer_id = broker.next_id()
        self.state = _Txn.UNINIT
        self.open_records: list[StoredRecord] = []
        self.first_open: dict[_TP, int] = {}
        self.pending: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> offset
        self._pending_metadata: list[GroupMetadata] = []
        self._deliveries: list[tuple[Callable[[Any, Any], None], StoredRecord]] = []
        self._round_robin = 0
        self._commit_unacknowledged = False
        self._fatal: KafkaError | None = None

    def init_transactions(self, timeout: float = -1) -> None:
        self._start("init_transactions")
        with self.broker.lock:
            if self.transactional_id is None:
                raise _error(KafkaError._NOT_CONFIGURED, "transactional.id is not set")
            self._require(_Txn.UNINIT)
            previous = self.broker._txn_owners.get(self.transactional_id)
            if previous is not None:
                previous.end_transaction(TxnState.ABORTED)
                previous.state = _Txn.FATAL
                previous._fatal = KafkaError(
                    KafkaError._FENCED, "fenced by a newer instance", fatal=True
                )
            self.broker._txn_owners[self.transactional_id] = self
            self.state = _Txn.READY

    def begin_transaction(self) -> None:
        self._start("begin_transaction")
        with self.broker.lock:
            self._require(_Txn.READY)
            self._commit_unacknowledged = False
            self.state = _Txn.IN_TXN

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Callable[[Any, Any], None] | None = None,
        timestamp: int = 0,
        headers: Headers | None = None,
    ) -> None:
        self._start("produce")
        with self.broker.lock:
            if self.transactional_id is not None:
                self._require(_Txn.IN_TXN)
            if partition < 0:
                count = len(self.broker._partitions(topic))
                partition = _pick_partition(key, count, self._round_robin)
                self._round_robin += key is None
            transactional = self.transactional_id is not None
            record = self.broker._append(
                StoredRecord(topic, partition, -1, key, value, headers, timestamp)
            )
            if transactional:
                record.state, record.producer_id = TxnState.OPEN, self.producer_id
                self.open_records.append(record)
                self.first_open.setdefault((topic, partition), record.offset)
            if on_delivery is not None:
                self._deliveries.append((on_delivery, record))

    def send_offsets_to_transaction(
        self, positions: Sequence[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._start("send_offsets_to_transaction")
        with self.broker.lock:
            self._require(_Txn.IN_TXN)
            metadata = self._checked(group_metadata)
            self._pending_metadata.append(metadata)
            for tp in positions:
                if tp.offset >= 0:
                    self.pending[(metadata.group_id, tp.topic, tp.partition)] = tp.offset

    def commit_transaction(self, timeout: float = -1) -> None:
        self._start("commit_transaction")
        with self.broker.lock:
            if self.state is _Txn.READY and self._commit_unacknowledged:
                self._commit_unacknowledged = False  # a retry of a commit that took effect
                return
            self._require(_Txn.IN_TXN)
            for metadata in self._pending_metadata:
                self._checked(metadata)
            offsets = dict(self.pending)
            self.end_transaction(TxnState.COMMITTED)
            for (group, topic, partition), offset in offsets.items():
                self.broker._group(group).committed[(topic, partition)] = offset
            self.state = _Txn.READY
        fault = self.broker.take_fault("after_commit_transaction")
        if fault is not None:
            self._commit_unacknowledged = True
            self._raise_fault(fault)

    def abort_transaction(self, timeout: float = -1) -> None:
        self._start("abort_transaction")
        with self.broker.lock:
            if self.state is not _Txn.ABORTABLE:
                self._require(_Txn.IN_TXN)
            self.end_transaction(TxnState.ABORTED)
            self.state = _Txn.READY

    def poll(self, timeout: float = -1) -> int:
        with self.broker.lock:
            deliveries, self._deliveries = self._deliveries, []
        for callback, record in deliveries:
            callback(None, MemoryMessage(record))
        return len(deliveries)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return 0

    def __len__(self) -> int:
        return len(self._deliveries)

    # -- internals -------------------------------------------------------------------------------
    def end_transaction(self, outcome: TxnState) -> None:
        """Mark the open records committed or aborted and forget pending offsets (lock held)."""
        for record in self.open_records:
            record.state = outcome
        self.open_records = []
        self.first_open = {}
        self.pending = {}
        self._pending_metadata = []

    def _start(self, point: FaultPoint) -> None:
        fault = self.broker.take_fault(point)
        if fault is not None:
            self._raise_fault(fault)

    def _raise_fault(self, fault: BaseException) -> None:
        """Injected Kafka errors move the producer to the state a real one would be in."""
        error = fault.args[0] if isinstance(fault, KafkaException) and fault.args else None
        if isinstance(error, KafkaError):
            with self.broker.lock:
                if error.fatal() and self.transactional_id is not None:
                    self.state, self._fatal = _Txn.FATAL, error  # its transaction stays open
                elif error.txn_requires_abort() and self.state is _Txn.IN_TXN:
                    self.state = _Txn.ABORTABLE
        raise fault

    def _checked(self, metadata: Any) -> GroupMetadata:
        try:
            return self.broker.check_metadata(metadata)
        except KafkaException:
            self.state = _Txn.ABORTABLE
            raise

    def _require(self, expected: _Txn) -> None:
        if self.transactional_id is None:
            raise _error(KafkaError._NOT_CONFIGURED, "transactional.id is not set")
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        if self.state is _Txn.ABORTABLE:
            raise _error(KafkaError._STATE, "transaction must be aborted", abort=True)
        if self.state is not expected:
            raise _error(KafkaError._STATE, f"operation not valid in state {self.state.value}")
