"""Liveness: whether the process's loops still turn, for `/healthz`.

A loop reports the time its current turn began; `/healthz` answers 503 once a loop's turn has
lasted longer than its limit. The consume loop's longest legitimate turn is a checkpoint that
runs into its deadline and then aborts (about 70 s with the defaults), or one that gives up on a
hung transactional call and replaces the producer (at most about 120 s, moderator/ingest/stuck.py);
a turn longer than that is a call that never returned somewhere else. A process stuck there
would otherwise stay up and silent: the orchestrator's liveness probe restarts it, and the
restart recovers exactly once as after any crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TurnStarted = Callable[[], float | None]
"""The monotonic time the loop's current turn began; None before its first turn."""


class Liveness:
    """Named loops and how long a turn of each may last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[str, tuple[TurnStarted, float]] = {}

    def add(self, name: str, turn_started: TurnStarted, limit_s: float) -> None:
        with self._lock:
            self._loops[name] = (turn_started, limit_s)

    def stalled(self, now: float | None = None) -> list[str]:
        """One line per loop whose current turn has lasted longer than its limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            loops = dict(self._loops)
        lines = []
        for name, (turn_started, limit_s) in sorted(loops.items()):
            began = turn_started()
            if began is not None and now - began > limit_s:
                lines.append(f"{name}: one turn for {now - began:.0f} s (limit {limit_s:g} s)")
        return lines
