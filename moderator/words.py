"""Counts in the words people read: `1 partition`, `2 partitions`, `1 batch`, `3 batches`."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str = "") -> str:
    """`n` and `noun`, in the plural unless n is 1 (`plural` where adding an s does not make
    it)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
