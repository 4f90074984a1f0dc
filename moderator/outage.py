"""A dependency that may stop answering for everyone: what the model server's and the object
store's outage waits share (moderator/engine/openai/outage.py, moderator/fetch/outage.py).

When a call's retries run out while no call has been answered since it started, and the
dependency is down (it refuses, times out, or says it cannot take work now), giving up would
turn every upload in flight into a verdict that nobody judged. The call waits instead, for up
to `wait_s` since it started. `Outage` keeps the times this needs and logs the outage's start
(`{subject}_unavailable`) and end (`{subject}_available_again`) once each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Outage:
    """Calls answered and calls waiting, as times (this clock); safe to use from any thread."""

    def __init__(
        self,
        subject: str,
        wait_s: float,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subject = subject  # names the log events: "engine", "s3"
        self.wait_s = wait_s
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._answered_at = float("-inf")
        self._failing_since: float | None = None  # the first failure since the last answer
        self._waiting = 0  # calls past their attempts, waiting out an outage
        self._outage_at: float | None = None  # when the first call started waiting
        self._waited_at = float("-inf")  # when a call last started or stopped waiting

    def now(self) -> float:
        return self._clock()

    def expired(self, started: float) -> bool:
        """Whether a call started at `started` may no longer wait (with `wait_s` 0, never may)."""
        return self.wait_s <= 0 or self._clock() - started >= self.wait_s

    def answered(self) -> None:
        """A call succeeded, or a probe was answered: the dependency is up."""
        with self._lock:
            now = self._clock()
            self._answered_at = now
            failing_since, self._failing_since = self._failing_since, None
            outage_at, self._outage_at = self._outage_at, None
            waiting = self._waiting
        if outage_at is not None:  # timed from the first failure, not from the first wait
            since = outage_at if failing_since is None else min(failing_since, outage_at)
            self._log.info(
                f"{self.subject}_available_again",
                unavailable_s=round(now - since, 1),
                waiting=waiting,
            )

    def failed(self) -> None:
        """A call failed with an error that may say the dependency is down."""
        with self._lock:
            if self._failing_since is None:
                self._failing_since = self._clock()

    def answered_since(self, started: float) -> bool:
        """Whether a call has succeeded since `started` (this clock)."""
        with self._lock:
            return self._answered_at >= started

    def waiting(self, delta: int, reason: str = "") -> None:
        """A call started (+1) or stopped (-1) waiting out an outage; the first logs it."""
        with self._lock:
            now = self._clock()
            self._waiting += delta
            self._waited_at = now
            first = delta > 0 and self._outage_at is None
            if first:
                self._outage_at = now
        if first:
            self._log.warning(
                f"{self.subject}_unavailable", reason=reason, waiting_up_to_s=self.wait_s
            )

    def any_waiting(self) -> bool:
        """Whether a call is waiting out an outage now."""
        with self._lock:
            return self._waiting > 0

    def waited_at(self) -> float:
        """Now while a call waits out an outage, else when one last stopped (-inf if none ever
        did)."""
        with self._lock:
            return self._clock() if self._waiting else self._waited_at

    def waiting_s(self) -> float:
        """While calls wait out an outage, seconds since the first failure of it; else 0."""
        with self._lock:
            if not self._waiting:
                return 0.0
            since = self._failing_since if self._failing_since is not None else self._outage_at
            return 0.0 if since is None else self._clock() - since
