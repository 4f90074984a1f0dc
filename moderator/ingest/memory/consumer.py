"""A consumer-group member reading from the in-memory broker, with cooperative rebalancing.

Rebalance callbacks run inside `consume()` without the broker lock held and receive only the
partitions that change; `read_committed` members stop at the last stable offset and wait while
a transaction holds offsets for their group.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    TopicPartition,
)

from moderator.ingest.memory.messages import (
    FaultPoint,
    GroupMetadata,
    GroupState,
    MemoryMessage,
    PartitionKey,
    StoredRecord,
    TxnState,
    kafka_error,
    topic_partitions,
)
from moderator.ingest.ports import RebalanceCallback


class _Broker(Protocol):
    """The `MemoryBroker` as its consumers use it (broker.py imports this module, not back)."""

    @property
    def lock(self) -> threading.RLock: ...
    def take_fault(self, point: FaultPoint) -> BaseException | None: ...
    def join(self, consumer: MemoryConsumer) -> None: ...
    def leave(self, consumer: MemoryConsumer) -> None: ...
    def rebalance(self, group_id: str) -> None: ...
    def group_of(self, consumer: MemoryConsumer) -> GroupState: ...
    def log(self, topic: str, partition: int) -> list[StoredRecord]: ...
    def end_offset(self, topic: str, partition: int, read_committed: bool = True) -> int: ...
    def has_pending_offsets(self, group: str, tp: PartitionKey) -> bool: ...
    @property
    def log_start(self) -> dict[PartitionKey, int]: ...


class MemoryConsumer:
    """A group member reading from a `MemoryBroker` (see `moderator.ingest.ports.Consumer`)."""

    def __init__(self, broker: _Broker, config: dict[str, Any]) -> None:
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
        self._positions: dict[PartitionKey, int | None] = {}  # None: not yet resolved
        self._paused: set[PartitionKey] = set()
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
                self.broker.rebalance(self.group_id)

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
            return topic_partitions(list(self._positions))

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        with self.broker.lock:
            group = self.broker.group_of(self)
            out = []
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if self.read_committed and self.broker.has_pending_offsets(self.group_id, key):
                    raise kafka_error(
                        KafkaError.UNSTABLE_OFFSET_COMMIT, "offsets pending", retriable=True
                    )
                offset = group.committed.get(key, OFFSET_INVALID)
                out.append(TopicPartition(tp.topic, tp.partition, offset))
            return out

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        """(low, high): the first offset retention has kept and the high watermark."""
        with self.broker.lock:
            key = (partition.topic, partition.partition)
            high = self.broker.end_offset(*key, read_committed=False)
            return self.broker.log_start.get(key, 0), high

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
                raise kafka_error(KafkaError._STATE, f"{key} is not assigned")
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
                raise kafka_error(KafkaError.UNKNOWN_MEMBER_ID, "not a member of the group")
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
                self.broker.leave(self)
            self._closed = True

    # -- internals -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def _call(self, kind: str, keys: list[PartitionKey]) -> None:
        callback = self._callbacks.get(kind)
        if kind == "lost" and callback is None:
            callback = self._callbacks.get("revoke")
        if keys and callback is not None:
            callback(self, topic_partitions(keys))

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
            partitions = topic_partitions(assigned)
            on_assign(self, partitions)
            with self.broker.lock:  # like librdkafka, offsets set in on_assign are start offsets
                for part in partitions:
                    key = (part.topic, part.partition)
                    if part.offset != OFFSET_INVALID and key in self._positions:
                        self._positions[key] = self._start_offset(key, part.offset)

    def _start_offset(self, key: PartitionKey, offset: int) -> int | None:
        if offset == OFFSET_BEGINNING:
            return 0
        if offset == OFFSET_END:
            return self.broker.end_offset(*key, read_committed=self.read_committed)
        return offset if offset >= 0 else None

    def _resolve(self, key: PartitionKey) -> int | None:
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
            log = self.broker.log(*key)
            end = self.broker.end_offset(*key, read_committed=self.read_committed)
            position = max(position, self.broker.log_start.get(key, 0))  # earliest, if deleted
            while position < end and len(messages) < limit:
                record = log[position]
                position += 1
                if not (self.read_committed and record.state is TxnState.ABORTED):
                    messages.append(MemoryMessage(record))
            self._positions[key] = position
        return messages
