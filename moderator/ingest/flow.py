"""Backpressure as a signal: pause above the high-water marks, resume below the low ones (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class FlowGate:
    high_items: int
    low_items: int
    high_bytes: int
    low_bytes: int
    paused: bool = False

    def update(self, items: int, buffered_bytes: int) -> Literal["pause", "resume"] | None:
        """The transition to make now, if any, for this much work in flight."""
        if not self.paused and (items >= self.high_items or buffered_bytes >= self.high_bytes):
            self.paused = True
            return "pause"
        if self.paused and items <= self.low_items and buffered_bytes <= self.low_bytes:
            self.paused = False
            return "resume"
        return None
