"""Per-partition offset tracking for out-of-order completion (pure).

Work completes in any order; the offset committed for a partition only ever covers the contiguous
prefix of consumed offsets that are all complete. Outputs are held until then, so a checkpoint
publishes exactly the outputs whose offsets it commits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
TP = tuple[str, int]


@dataclass
class Ready(Generic[T]):
    """The checkpointable prefix of one partition: outputs in offset order, next offset to read."""

    next_offset: int
    outputs: list[T] = field(default_factory=list)
    count: int = 0


class PartitionTracker(Generic[T]):
    """Offsets of one partition in consumption order, each pending or complete."""

    def __init__(self) -> None:
        self._slots: OrderedDict[int, list[T] | None] = OrderedDict()
        self._last_tracked = -1
        self.base: int | None = None
        """Offset to rewind to: the last committed next-offset, or the first offset tracked."""

    def track(self, offset: int) -> None:
        if offset <= self._last_tracked:
            raise ValueError(f"offset {offset} tracked after {self._last_tracked}")
        if self.base is None:
            self.base = offset
        self._last_tracked = offset
        self._slots[offset] = None

    def complete(self, offset: int, outputs: list[T]) -> None:
        if offset not in self._slots:
            raise KeyError(offset)
        if self._slots[offset] is not None:
            raise ValueError(f"offset {offset} completed twice")
        self._slots[offset] = outputs

    def take_ready(self) -> Ready[T] | None:
        """Pop the contiguous completed prefix; None when the lowest offset is still pending."""
        ready: Ready[T] | None = None
        while self._slots:
            offset, outputs = next(iter(self._slots.items()))
            if outputs is None:
                break
            del self._slots[offset]
            if ready is None:
                ready = Ready(next_offset=offset + 1)
            ready.next_offset = offset + 1
            ready.outputs.extend(outputs)
            ready.count += 1
        return ready

    def committed(self, next_offset: int) -> None:
        self.base = next_offset

    def clear(self) -> None:
        """Forget all tracked work (after a rewind, revoke or loss)."""
        self._slots.clear()
        self._last_tracked = -1

    @property
    def pending(self) -> int:
        return sum(1 for v in self._slots.values() if v is None)

    def __len__(self) -> int:
        return len(self._slots)


class OffsetTracker(Generic[T]):
    """All partitions this consumer owns, keyed by (topic, partition)."""

    def __init__(self) -> None:
        self._parts: dict[TP, PartitionTracker[T]] = {}

    def partition(self, tp: TP) -> PartitionTracker[T]:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionTracker()
        return part

    def track(self, tp: TP, offset: int) -> None:
        self.partition(tp).track(offset)

    def complete(self, tp: TP, offset: int, outputs: list[T]) -> None:
        self.partition(tp).complete(offset, outputs)

    def take_ready(self, only: Iterable[Hashable] | None = None) -> dict[TP, Ready[T]]:
        wanted = None if only is None else set(only)
        taken: dict[TP, Ready[T]] = {}
        for tp, part in self._parts.items():
            if wanted is not None and tp not in wanted:
                continue
            ready = part.take_ready()
            if ready is not None:
                taken[tp] = ready
        return taken

    def committed(self, tp: TP, next_offset: int) -> None:
        self.partition(tp).committed(next_offset)

    def forget(self, tp: TP) -> None:
        self._parts.pop(tp, None)

    def rewind_points(self) -> dict[TP, int]:
        return {tp: p.base for tp, p in self._parts.items() if p.base is not None}

    @property
    def in_flight(self) -> int:
        return sum(len(p) for p in self._parts.values())
