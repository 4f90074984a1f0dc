"""A transactional producer writing to the in-memory broker.

It walks the transaction states a confluent-kafka producer does (uninitialized, ready, in
transaction, abortable error, fatal error), and injected Kafka errors leave it in the state a
real one would be in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from moderator.ingest.memory.messages import (
    FaultPoint,
    GroupMetadata,
    GroupState,
    MemoryMessage,
    PartitionKey,
    StoredRecord,
    TxnState,
    kafka_error,
    pick_partition,
)
from moderator.ingest.ports import Headers


class _Broker(Protocol):
    """The `MemoryBroker` as its producers use it (broker.py imports this module, not back)."""

    @property
    def lock(self) -> threading.RLock: ...
    @property
    def txn_owners(self) -> dict[str, MemoryProducer]: ...  # by transactional.id
    def next_id(self) -> int: ...
    def take_fault(self, point: FaultPoint) -> BaseException | None: ...
    def partitions(self, topic: str) -> list[list[StoredRecord]]: ...
    def append(self, record: StoredRecord) -> StoredRecord: ...
    def group(self, group_id: str) -> GroupState: ...
    def check_metadata(self, metadata: Any) -> GroupMetadata: ...


class _Txn(Enum):
    UNINIT = "uninitialized"
    READY = "ready"
    IN_TXN = "in transaction"
    ABORTABLE = "abortable error"
    FATAL = "fatal error"


class MemoryProducer:
    """A producer writing to a `MemoryBroker` (see `moderator.ingest.ports.Producer`)."""

    def __init__(self, broker: _Broker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.transactional_id: str | None = config.get("transactional.id")
        self.producer_id = broker.next_id()
        self.state = _Txn.UNINIT
        self.open_records: list[StoredRecord] = []
        self.first_open: dict[PartitionKey, int] = {}
        self.pending: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> offset
        self._pending_metadata: list[GroupMetadata] = []
        self._deliveries: list[tuple[Callable[[Any, Any], None], StoredRecord]] = []
        self._round_robin = 0
        self._commit_unacknowledged = False
        self._fatal: KafkaError | None = None
        # librdkafka's default; it refuses a larger record at produce, as this does.
        self.max_message_bytes = int(config.get("message.max.bytes", 1_000_000))

    def init_transactions(self, timeout: float = -1) -> None:
        self._start("init_transactions")
        with self.broker.lock:
            if self.transactional_id is None:
                raise kafka_error(KafkaError._NOT_CONFIGURED, "transactional.id is not set")
            self._require(_Txn.UNINIT)
            previous = self.broker.txn_owners.get(self.transactional_id)
            if previous is not None:
                previous.end_transaction(TxnState.ABORTED)
                previous.state = _Txn.FATAL
                previous._fatal = KafkaError(
                    KafkaError._FENCED, "fenced by a newer instance", fatal=True
                )
            self.broker.txn_owners[self.transactional_id] = self
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
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers or [])
        if size > self.max_message_bytes:
            raise kafka_error(
                KafkaError.MSG_SIZE_TOO_LARGE,
                f"Message size too large: {size} bytes (limit {self.max_message_bytes})",
            )
        with self.broker.lock:
            if self.transactional_id is not None:
                self._require(_Txn.IN_TXN)
            if partition < 0:
                count = len(self.broker.partitions(topic))
                partition = pick_partition(key, count, self._round_robin)
                self._round_robin += key is None
            transactional = self.transactional_id is not None
            record = self.broker.append(
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
                self.broker.group(group).committed[(topic, partition)] = offset
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
            raise kafka_error(KafkaError._NOT_CONFIGURED, "transactional.id is not set")
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        if self.state is _Txn.ABORTABLE:
            raise kafka_error(KafkaError._STATE, "transaction must be aborted", abort=True)
        if self.state is not expected:
            raise kafka_error(KafkaError._STATE, f"operation not valid in state {self.state.value}")
