"""A consumer that reads fixed offset ranges and says when it has read them all.

It stands in for the service's consumer inside the same ingest loop as `moderator run`: where
the loop subscribes, this one assigns the plan's partitions itself (no group membership, no
rebalances), starting at the run's committed offset when there is one (a resumed run) and
otherwise at the range's start. Records at or past a range's end are never handed out; when
every partition's position has reached its end, `finished` is set and `done` is true; the run
stops the loop once everything handed out is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import TopicPartition

from moderator.ingest.ports import RebalanceCallback
from moderator.replay.request import OffsetRange


class RangeConsumer:
    """Wraps a confluent-kafka consumer (the ingest loop's Consumer port) for one plan."""

    def __init__(
        self,
        inner: Any,
        topic: str,
        ranges: Sequence[OffsetRange],
        finished: threading.Event,
        *,
        timeout_s: float = 30.0,
        on_resumed: Callable[[int], None] | None = None,
    ) -> None:
        self._inner = inner
        # Called at the start with the offsets the run's earlier processes committed (a resume).
        self._on_resumed = on_resumed
        self._topic = topic
        self._ends = {r.partition: r.end for r in ranges}
        self._starts = {r.partition: r.start for r in ranges}
        self._finished = finished
        self._timeout_s = timeout_s
        self._open: set[int] = set()
        self.resumed_from: dict[int, int] = {}
        self.last_handed: dict[int, int] = {}  # partition -> last offset handed to the loop

    # -- what the loop calls -------------------------------------------------------------------

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        starts = self._start_offsets()
        if self._on_resumed is not None and self.resumed_from:
            self._on_resumed(sum(o - self._starts[p] for p, o in self.resumed_from.items()))
        self._open = {p for p, start in starts.items() if start < self._ends[p]}
        parts = [TopicPartition(self._topic, p, starts[p]) for p in sorted(self._open)]
        self._inner.assign(parts)
        if on_assign is not None:
            on_assign(self, parts)
        self._check_done()

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if not self._open:
            self._finished.set()
            if timeout > 0:
                time.sleep(min(timeout, 0.1))  # the loop polls in a loop: no busy wait
            return []
        out = []
        for msg in self._inner.consume(num_messages, timeout):
            if msg.error() is not None:
                out.append(msg)
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition in self._open and offset < self._ends[partition]:
                out.append(msg)
                self.last_handed[partition] = max(offset, self.last_handed.get(partition, -1))
        self._check_done(out)
        return out

    def pause(self, partitions: list[Any]) -> None:
        self._inner.pause(partitions)

    def resume(self, partitions: list[Any]) -> None:
        self._inner.resume([tp for tp in partitions if tp.partition in self._open])

    def assignment(self) -> list[Any]:
        return list(self._inner.assignment())

    def committed(self, partitions: list[Any], timeout: float = -1) -> list[Any]:
        return list(self._inner.committed(partitions, timeout=timeout))

    def seek(self, partition: Any) -> None:
        self._inner.seek(partition)
        if partition.partition in self._ends and partition.offset < self._ends[partition.partition]:
            # A rewind after an aborted checkpoint: the range is not read to its end after all.
            self._open.add(partition.partition)
            self._inner.resume([TopicPartition(self._topic, partition.partition)])

    def commit(
        self, message: Any = None, offsets: list[Any] | None = None, asynchronous: bool = True
    ) -> Any:
        return self._inner.commit(offsets=offsets, asynchronous=asynchronous)

    def consumer_group_metadata(self) -> Any:
        return self._inner.consumer_group_metadata()

    def close(self) -> None:
        self._inner.close()

    # -- ranges --------------------------------------------------------------------------------

    def _start_offsets(self) -> dict[int, int]:
        """The run's committed offset where it has one (resume), else the range's start."""
        asked = [TopicPartition(self._topic, p) for p in sorted(self._ends)]
        starts = dict(self._starts)
        for tp in self._inner.committed(asked, timeout=self._timeout_s):
            if tp.offset >= 0:
                start, end = self._starts[tp.partition], self._ends[tp.partition]
                starts[tp.partition] = min(max(tp.offset, start), end)
                self.resumed_from[tp.partition] = starts[tp.partition]
        return starts

    @property
    def done(self) -> bool:
        """Every range has been handed out to its end."""
        return not self._open

    def _check_done(self, handed: list[Any] | None = None) -> None:
        """Close partitions whose position reached the end (transaction markers included) and
        stop fetching them: on a live topic records keep arriving past the end."""
        closed = {
            msg.partition()
            for msg in handed or []
            if msg.error() is None and msg.offset() + 1 >= self._ends.get(msg.partition(), 0)
        }
        rest = sorted(self._open - closed)
        if rest:
            positions = self._inner.position([TopicPartition(self._topic, p) for p in rest])
            closed |= {tp.partition for tp in positions if tp.offset >= self._ends[tp.partition]}
        closed &= self._open
        if closed:
            self._open -= closed
            self._inner.pause([TopicPartition(self._topic, p) for p in sorted(closed)])
        if not self._open:
            self._finished.set()
