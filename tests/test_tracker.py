from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.ingest.tracker import OffsetTracker, PartitionTracker

TP = ("uploads", 0)


def test_prefix_waits_for_lowest_pending_offset() -> None:
    part: PartitionTracker[str] = PartitionTracker()
    for off in (10, 11, 12):
        part.track(off)
    part.complete(12, ["c"])
    part.complete(11, ["b"])
    assert part.take_ready() is None
    part.complete(10, ["a"])
    ready = part.take_ready()
    assert ready is not None
    assert (ready.next_offset, ready.outputs, ready.count) == (13, ["a", "b", "c"], 3)
    assert len(part) == 0


def test_gaps_between_consumed_offsets_are_fine() -> None:
    part: PartitionTracker[int] = PartitionTracker()
    part.track(5)
    part.track(9)  # 6..8 were transaction markers or compacted away
    part.complete(9, [9])
    part.complete(5, [5])
    ready = part.take_ready()
    assert ready is not None and ready.next_offset == 10


def test_rejects_misuse() -> None:
    part: PartitionTracker[int] = PartitionTracker()
    part.track(3)
    with pytest.raises(ValueError):
        part.track(3)
    with pytest.raises(KeyError):
        part.complete(4, [])
    part.complete(3, [])
    with pytest.raises(ValueError):
        part.complete(3, [])


def test_rewind_point_is_first_offset_then_last_commit() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.track(TP, 40)
    assert tracker.rewind_points() == {TP: 40}
    tracker.complete(TP, 40, [])
    ready = tracker.take_ready()
    tracker.committed(TP, ready[TP].next_offset)
    tracker.track(TP, 41)
    assert tracker.rewind_points() == {TP: 41}


@given(
    n=st.integers(min_value=1, max_value=60),
    data=st.data(),
)
def test_committed_offset_never_passes_an_incomplete_one(n: int, data: st.DataObject) -> None:
    offsets = sorted(data.draw(st.sets(st.integers(0, 500), min_size=n, max_size=n)))
    order = data.draw(st.permutations(offsets))
    take_after = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    tracker: OffsetTracker[int] = OffsetTracker()
    for off in offsets:
        tracker.track(TP, off)
    done: set[int] = set()
    published: list[int] = []
    committed = offsets[0]
    for off, take in zip(order, take_after, strict=True):
        tracker.complete(TP, off, [off])
        done.add(off)
        if take:
            ready = tracker.take_ready().get(TP)
            if ready is not None:
                # every consumed offset below the commit point is complete
                assert all(o in done for o in offsets if o < ready.next_offset)
                assert ready.next_offset > committed
                committed = ready.next_offset
                published.extend(ready.outputs)
    final = tracker.take_ready().get(TP)
    if final is not None:
        published.extend(final.outputs)
        committed = final.next_offset
    assert published == offsets  # each output exactly once, in offset order
    assert committed == offsets[-1] + 1
    assert tracker.in_flight == 0
