"""The pure parts of timestamp → offset ranges and consumer-group lag."""

from __future__ import annotations

import pytest

from moderator.ingest.lag import partition_lags
from moderator.ingest.offsets import (
    OFFSET_NONE,
    PartitionRange,
    in_window,
    lookups_answered,
    resolve,
)


@pytest.mark.parametrize(
    ("start", "end", "low", "high", "expected"),
    [
        (3, 7, 0, 10, (3, 7)),
        (3, OFFSET_NONE, 0, 10, (3, 10)),  # nothing at or after `to`: up to the captured end
        (OFFSET_NONE, OFFSET_NONE, 0, 10, (10, 10)),  # nothing at or after `from`: empty
        (12, OFFSET_NONE, 0, 10, (10, 10)),  # appended after the watermarks were read
        (3, 14, 0, 10, (3, 10)),
        (1, 4, 2, 10, (2, 4)),  # retention passed `from`
        (5, 5, 0, 10, (5, 5)),
    ],
)
def test_resolve(start: int, end: int, low: int, high: int, expected: tuple[int, int]) -> None:
    assert resolve(0, start, end, low, high) == PartitionRange(0, *expected)


def test_lookups_answered() -> None:
    watermarks = {0: (0, 5), 1: (3, 3), 2: (2, 9)}
    assert lookups_answered({0: 0, 1: OFFSET_NONE, 2: 2}, watermarks)
    assert not lookups_answered({0: OFFSET_NONE, 1: OFFSET_NONE, 2: 2}, watermarks)
    assert lookups_answered({0: OFFSET_NONE}, {0: (4, 4)})  # empty: nothing to tell


def test_in_window_is_half_open() -> None:
    assert in_window(10, 10, 20) and in_window(19, 10, 20)
    assert not in_window(20, 10, 20) and not in_window(9, 10, 20)


def test_partition_lags() -> None:
    lags = partition_lags(
        committed={0: 10, 1: None, 2: 1},
        low={0: 0, 1: 4, 2: 5, 3: 0},
        high={0: 13, 1: 9, 2: 8, 3: 0},
        stable={0: 11, 1: 9, 2: 8, 3: 0},
    )
    assert [(x.partition, x.position, x.lag, x.stable_lag) for x in lags] == [
        (0, 10, 3, 1),
        (1, 4, 5, 5),  # never committed: resumes at the earliest offset
        (2, 5, 3, 3),  # retention passed the commit
        (3, 0, 0, 0),
    ]
