"""The engine's readiness and busy ratio, read from its window at check and scrape time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from moderator.engine.answers import AnswerClock
from moderator.engine.window_engines import WaitsOut
from moderator.obs.health import Check
from moderator.obs.metrics import Metrics

FAILING_S = 60.0
"""After a first answer: how long every engine call may fail before the engine is not ready."""


class WindowState(Protocol):
    """What `EngineWindow` tells about the engine behind it."""

    @property
    def answers(self) -> AnswerClock: ...
    @property
    def busy_seconds(self) -> float: ...
    @property
    def concurrency(self) -> int: ...


class EngineWatch:
    """The `engine` readiness check and the `moderator_engine_*` gauges.

    The engine is ready once it is loaded (an engine with a `ready` property, e.g. the
    transformers engine while it warms up, says so itself) and it has answered: the service's
    warm-up request or the first batch came back with a model's answer, not an engine error.
    It is not ready again while every engine call has failed for more than `failing_s` (a
    model server that went away): the first call that answers makes it ready. Requests that
    wait out an outage of the server end no call meanwhile: then it is not ready once the
    server has answered none of them for more than `failing_s`.
    """

    def __init__(
        self,
        engine: object,
        window: WindowState,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        failing_s: float = FAILING_S,
    ) -> None:
        self._engine = engine
        self._failing_s = failing_s
        self._window = window
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._last = (clock(), window.busy_seconds)
        metrics.set("moderator_engine_ready", 0)

    def check(self) -> Check:
        loaded = bool(getattr(self._engine, "ready", True))
        answers = self._window.answers
        engine = self._engine
        waiting = engine.waiting_s() if isinstance(engine, WaitsOut) else 0.0
        failing = max(answers.failing_s(), waiting)
        ready = loaded and answers.answered and failing <= self._failing_s
        self._metrics.set("moderator_engine_ready", 1 if ready else 0)
        if ready:
            return Check(True, "answered")
        if loaded and answers.answered:
            why = "requests wait for the server" if waiting else "every engine call failed"
            return Check(False, f"no model answer for {failing:.0f} s: {why}")
        return Check(False, "warming up" if loaded else "loading the model")

    def collect(self) -> None:
        """Scrape hook: readiness, and the busy fraction since the previous scrape."""
        self.check()
        now, busy = self._clock(), self._window.busy_seconds
        with self._lock:
            last_t, last_busy = self._last
            self._last = (now, busy)
        span = (now - last_t) * self._window.concurrency
        if span > 0:
            ratio = min(1.0, max(0.0, (busy - last_busy) / span))
            self._metrics.set("moderator_engine_busy_ratio", ratio)
