"""How far decoding may run ahead of the engine.

A decoded event waits in the engine window until the engine takes it; decoding it earlier
than needed gains nothing and costs twice. The frames hold memory, and, worse, the decoding
threads take the interpreter lock from the thread that feeds the engine: with a backlog at
start-up the fetch pool decoded up to `flow.high_in_flight` events while the engine's first
requests waited for the CPU (docs/performance.md, "Decoding ahead of the engine"). So a fetch
worker takes a place before it decodes, and the place is given back when the engine's answer
for that event is in, or when the event ends without one.
"""

from __future__ import annotations

import threading


class DecodeAhead:
    """At most `limit` events decoded and not yet answered by the engine (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the decode-ahead limit must be at least 1")
        self._limit = limit
        self._taken = 0
        self._cond = threading.Condition()

    @property
    def taken(self) -> int:
        return self._taken

    def enter(self) -> None:
        """Take a place, waiting while every place is taken."""
        with self._cond:
            while self._limit is not None and self._taken >= self._limit:
                self._cond.wait()
            self._taken += 1

    def leave(self) -> None:
        """Give a place back (once per enter)."""
        with self._cond:
            self._taken -= 1
            self._cond.notify()
