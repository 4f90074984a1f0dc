"""In-memory Kafka-like broker with the real transaction rules, for tests of the checkpoint.

librdkafka's mock cluster shows aborted records to `read_committed` readers and discards offsets
sent with a transaction, so the exactly-once protocol is proven against this fake instead. Its
consumers (`consumer.py`) and producers (`producer.py`) satisfy `moderator.ingest.ports` and raise
the real confluent-kafka `KafkaException(KafkaError(...))` with the flags the checkpoint inspects.

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
from typing import Any

from confluent_kafka import KafkaError

from moderator.ingest.memory.consumer import MemoryConsumer
from moderator.ingest.memory.messages import (
    FAULT_POINTS,
    FaultPoint,
    GroupMetadata,
    GroupState,
    PartitionKey,
    StoredRecord,
    TxnState,
    kafka_error,
    pick_partition,
)
from moderator.ingest.memory.producer import MemoryProducer
from moderator.ingest.ports import Headers


class MemoryBroker:
    """Topics, consumer groups and transactions, guarded by one lock."""

    def __init__(self, default_partitions: int = 4) -> None:
        self.default_partitions = default_partitions
        self.lock = threading.RLock()
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._groups: dict[str, GroupState] = {}
        self.txn_owners: dict[str, MemoryProducer] = {}
        self._faults: dict[str, list[BaseException | None]] = {}
        self._unkeyed: dict[str, int] = {}  # round-robin counters of produce_plain
        self._ids = 0
        self.log_start: dict[PartitionKey, int] = {}  # the first offset retention has kept

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
                for p in range(len(self.partitions(topic)))
                for r in self.log(topic, p)[: self.end_offset(topic, p, read_committed)]
                if not (read_committed and r.state is TxnState.ABORTED)
            ]

    def delete_records(self, topic: str, partition: int, before: int) -> None:
        """Retention: the partition's records before offset `before` are gone (its low
        watermark moves there); a consumer whose position is older resets to it, as one with
        auto.offset.reset=earliest does."""
        with self.lock:
            end = len(self.log(topic, partition))
            key = (topic, partition)
            self.log_start[key] = max(self.log_start.get(key, 0), min(before, end))

    def committed_offset(self, group: str, topic: str, partition: int) -> int | None:
        with self.lock:
            return self.group(group).committed.get((topic, partition))

    def end_offset(self, topic: str, partition: int, read_committed: bool = True) -> int:
        """The last stable offset for read_committed, else the high watermark."""
        with self.lock:
            end = len(self.log(topic, partition))
            if not read_committed:
                return end
            firsts = [p.first_open.get((topic, partition)) for p in self.txn_owners.values()]
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
                partition = pick_partition(key, len(self.partitions(topic)), count)
                self._unkeyed[topic] = count + (key is None)
            return self.append(StoredRecord(topic, partition, -1, key, value, headers, 0))

    def evict(self, consumer: MemoryConsumer) -> None:
        """Kick a member out of its group; it sees its partitions lost at its next consume()."""
        with self.lock:
            if consumer.member_id is None:
                return
            self.leave(consumer)
            consumer.evicted = True

    def inject(self, point: FaultPoint, exc: BaseException, times: int = 1, skip: int = 0) -> None:
        """Let `skip` calls reaching `point` pass, then raise `exc` at the next `times` calls.

        Injections at one point queue up behind each other (see FAULT_POINTS for the points).
        """
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {sorted(FAULT_POINTS)}")
        with self.lock:
            self._faults.setdefault(point, []).extend([None] * skip + [exc] * times)

    # -- for the consumers and producers (they call these with the lock held) ----------------------
    def next_id(self) -> int:
        with self.lock:
            self._ids += 1
            return self._ids

    def take_fault(self, point: FaultPoint) -> BaseException | None:
        with self.lock:
            queue = self._faults.get(point)
            return queue.pop(0) if queue else None

    def partitions(self, topic: str) -> list[list[StoredRecord]]:
        if topic not in self._logs:
            self.create_topic(topic, self.default_partitions)
        return self._logs[topic]

    def log(self, topic: str, partition: int) -> list[StoredRecord]:
        logs = self.partitions(topic)
        if not 0 <= partition < len(logs):
            raise kafka_error(
                KafkaError._UNKNOWN_PARTITION, f"{topic} has no partition {partition}"
            )
        return logs[partition]

    def append(self, record: StoredRecord) -> StoredRecord:
        log = self.log(record.topic, record.partition)
        record.offset = len(log)
        record.headers = list(record.headers) if record.headers is not None else None
        record.timestamp_ms = record.timestamp_ms or int(time.time() * 1000)
        record.state = TxnState.PLAIN if record.producer_id is None else TxnState.OPEN
        log.append(record)
        return record

    def has_pending_offsets(self, group: str, tp: PartitionKey) -> bool:
        return any((group, *tp) in p.pending for p in self.txn_owners.values())

    def group(self, group_id: str) -> GroupState:
        return self._groups.setdefault(group_id, GroupState())

    def group_of(self, consumer: MemoryConsumer) -> GroupState:
        return self.group(consumer.group_id)

    def join(self, consumer: MemoryConsumer) -> None:
        for topic in consumer.topics:
            self.partitions(topic)
        consumer.member_id = f"{consumer.group_id}-member-{self.next_id()}"
        self.group_of(consumer).members[consumer.member_id] = consumer
        self.rebalance(consumer.group_id)

    def leave(self, consumer: MemoryConsumer) -> None:
        group = self.group_of(consumer)
        group.members.pop(consumer.member_id or "", None)
        for tp in [tp for tp, m in group.owner.items() if m == consumer.member_id]:
            del group.owner[tp]
        consumer.member_id = None
        self.rebalance(consumer.group_id)

    def rebalance(self, group_id: str) -> None:
        """New generation and target assignment: each topic's partitions dealt round-robin."""
        group = self.group(group_id)
        group.generation += 1
        group.target = {m: set() for m in group.members}
        topics = sorted({t for c in group.members.values() for t in c.topics})
        for topic in topics:
            eligible = [m for m, c in group.members.items() if topic in c.topics]
            for p in range(len(self.partitions(topic))):
                group.target[eligible[p % len(eligible)]].add((topic, p))

    def check_metadata(self, metadata: Any) -> GroupMetadata:
        if not isinstance(metadata, GroupMetadata):
            raise kafka_error(KafkaError._INVALID_ARG, "group metadata is not from this broker")
        group = self.group(metadata.group_id)
        if metadata.member_id not in group.members:
            raise kafka_error(KafkaError.UNKNOWN_MEMBER_ID, "member left the group", abort=True)
        if metadata.generation != group.generation:
            raise kafka_error(KafkaError.ILLEGAL_GENERATION, "stale group generation", abort=True)
        return metadata
