"""Whether the engine answers: when it last gave a model's answer, and since when every call
has failed instead. Read by the `engine` readiness check (moderator/obs/engine.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from moderator.engine.base import EngineResult
from moderator.errors import ErrorCode

NO_ANSWER = frozenset({ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT})
"""Results that are not the model's answer: a call returning only these has not shown that the
engine works (an OpenAI-compatible server that cannot be reached answers them per item)."""


class AnswerClock:
    """The outcome of each engine call, as times: a call answered when it returned at least one
    result that is not in NO_ANSWER; it failed when it raised or returned only those."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._answered = False
        self._failing_since: float | None = None

    def record(self, outcome: Sequence[EngineResult] | Exception) -> None:
        answered = not isinstance(outcome, Exception) and any(
            r.error_code not in NO_ANSWER for r in outcome
        )
        with self._lock:
            if answered:
                self._answered, self._failing_since = True, None
            elif self._failing_since is None:
                self._failing_since = self._clock()

    @property
    def answered(self) -> bool:
        """Whether any call has returned a model's answer."""
        return self._answered

    def failing_s(self) -> float:
        """Seconds since the first of the calls that have all failed since the last answer (or
        since the start); 0 when the latest call answered or none has failed."""
        with self._lock:
            since = self._failing_since
        return 0.0 if since is None else self._clock() - since
