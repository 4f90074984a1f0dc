"""Bytes held by the events in progress: downloaded objects and decoded frames.

The consume loop pauses intake on the total (backpressure), and the processor waits before
fetching while the total is over `flow.max_buffered_bytes`, so that accepted events beyond it
stay small parsed events. Memory inside decoders is bounded separately (fetch/budget.py).
"""

from __future__ import annotations

import threading
from typing import Protocol


class Holder(Protocol):
    """One event's share: the bytes it holds now."""

    held_bytes: int


class HeldBytes:
    """The total held by every holder, and admission under an optional limit."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._total = 0
        self._cond = threading.Condition()

    @property
    def total(self) -> int:
        return self._total

    def admit(self) -> None:
        """Wait while the total is at or over the limit (no limit: return at once)."""
        if self._limit is None:
            return
        with self._cond:
            while self._total >= self._limit:
                self._cond.wait(0.5)

    def add(self, holder: Holder, delta: int | None) -> None:
        """Count `delta` more bytes held by `holder`; None gives all of its bytes back (a
        second time: none)."""
        with self._cond:
            delta = -holder.held_bytes if delta is None else delta
            self._total += delta
            holder.held_bytes += delta
            if delta < 0 and self._limit is not None:
                self._cond.notify_all()
