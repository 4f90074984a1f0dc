"""Records, group state and helpers shared by the in-memory broker, consumer and producer."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol, get_args

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, TopicPartition

from moderator.ingest.ports import Headers

PartitionKey = tuple[str, int]  # (topic, partition)

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


class GroupMember(Protocol):
    """What the group coordinator reads from a member (a `MemoryConsumer`)."""

    @property
    def topics(self) -> list[str]: ...


@dataclass
class GroupState:
    """One consumer group: its members, generation, assignment and committed offsets."""

    members: dict[str, GroupMember] = field(default_factory=dict)  # in join order
    generation: int = 0
    target: dict[str, set[PartitionKey]] = field(default_factory=dict)
    owner: dict[PartitionKey, str] = field(default_factory=dict)
    committed: dict[PartitionKey, int] = field(default_factory=dict)


def kafka_error(
    code: int, reason: str, *, fatal: bool = False, retriable: bool = False, abort: bool = False
) -> KafkaException:
    """The exception confluent-kafka raises, with the flags the checkpoint inspects."""
    return KafkaException(
        KafkaError(code, reason, fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


def topic_partitions(keys: Sequence[PartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in keys]


def pick_partition(key: bytes | None, count: int, counter: int) -> int:
    """Stable hash of the key, else round-robin by `counter`."""
    return (zlib.crc32(key) if key is not None else counter) % count
