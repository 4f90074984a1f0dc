"""Hot-path log sampling: a structlog processor that keeps a per-second quota of each
per-event log line (`verdict`, `event_error`, ...) and counts the rest.

At thousands of events a second a line per event would cost more than the work it describes
and drown the lines that matter. The first `per_second` lines of each hot-path event name in a
one-second window are kept; the rest are dropped, and the next line kept for that name carries
`sampled_out`: how many were dropped since the previous one. Other lines are never sampled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

# Log events written once per event, per message or per checkpoint (docs/observability.md).
HOT_PATH_EVENTS = frozenset(
    {
        "verdict",
        "event_error",
        "event_abandoned",
        "dead_lettered",
        "malformed_skipped",
        "checkpoint",
        "consumer_error",
        "openai_request_retry",
    }
)


@dataclass
class _Window:
    start: float
    kept: int = 0
    dropped: int = 0  # since the last line kept


class HotPathSampler:
    """structlog processor; `per_second=0` keeps every line. Thread-safe."""

    def __init__(
        self,
        per_second: int,
        events: frozenset[str] = HOT_PATH_EVENTS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second < 0:
            raise ValueError("per_second must be >= 0")
        self._limit = per_second
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = event_dict.get("event")
        if self._limit == 0 or not isinstance(name, str) or name not in self._events:
            return event_dict
        now = self._clock()
        with self._lock:
            window = self._windows.get(name)
            if window is None:
                window = self._windows[name] = _Window(now)
            elif now - window.start >= 1.0:
                window.start, window.kept = now, 0
            if window.kept >= self._limit:
                window.dropped += 1
                raise structlog.DropEvent
            window.kept += 1
            dropped, window.dropped = window.dropped, 0
        if dropped:
            event_dict["sampled_out"] = dropped
        return event_dict

    def take_dropped(self) -> dict[str, int]:
        """Lines dropped since the last one kept, by name, counted as reported: for a last line
        at shutdown, after which no line of those names would carry them."""
        with self._lock:
            dropped = {name: w.dropped for name, w in sorted(self._windows.items()) if w.dropped}
            for window in self._windows.values():
                window.dropped = 0
        return dropped
