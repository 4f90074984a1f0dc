"""Counts in words."""

from __future__ import annotations

from moderator.words import counted


def test_one_is_singular_every_other_count_plural() -> None:
    assert counted(1, "partition") == "1 partition"
    assert [counted(n, "partition") for n in (0, 2)] == ["0 partitions", "2 partitions"]
    assert counted(3, "batch", "batches") == "3 batches"
    assert counted(1, "batch", "batches") == "1 batch"
