"""Whether the object store serves reads: an outage is waited out, not turned into verdicts.

A read that fails with a transient error (a connection refused, a 5xx, throttling, a timeout)
is retried `s3.max_attempts` times. When those run out while the store has served other reads
since this one started, the object itself is the problem: the read gives up (FETCH_FAILED). When
the store has served no read since, it is down for everyone, and giving up would turn every
upload in flight into an error verdict that nobody judges again: the read keeps retrying until
the store answers or `s3.outage_wait_s` has passed. Meanwhile the consumer's in-flight limit
pauses its partitions, so uploads wait in Kafka instead.

`StoreOutage` keeps the times this needs, logs the outage's start and end once each, and
answers the `s3` readiness check (moderator/obs/store.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("moderator.fetch")


class StoreOutage:
    """Reads served and reads failing, as times; safe to use from every fetch thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._served_at = float("-inf")
        self._failing_since: float | None = None  # the first failure since the last read served
        self._retrying = 0  # reads between their first transient failure and their end
        self._waiting = 0  # of those, reads past their attempts, waiting out an outage
        self._outage_at: float | None = None  # when the first read started waiting

    def now(self) -> float:
        return self._clock()

    def served(self) -> None:
        """A read succeeded: the store is up."""
        with self._lock:
            now = self._clock()
            self._served_at = now
            failing_since, self._failing_since = self._failing_since, None
            outage_at, self._outage_at = self._outage_at, None
            waiting = self._waiting
        if outage_at is not None:  # timed from the first failure, not from the first wait
            since = outage_at if failing_since is None else min(failing_since, outage_at)
            log.info("s3_available_again", unavailable_s=round(now - since, 1), waiting=waiting)

    def failed(self) -> None:
        """A read failed with a transient error (it may be retried)."""
        with self._lock:
            if self._failing_since is None:
                self._failing_since = self._clock()

    def served_since(self, started: float) -> bool:
        """Whether a read has succeeded since `started` (this store's clock)."""
        with self._lock:
            return self._served_at >= started

    def retrying(self, delta: int) -> None:
        """A read started (+1) or ended (-1) retrying; with none left, no failure is current."""
        with self._lock:
            self._retrying += delta
            if self._retrying == 0:
                self._failing_since = None

    def waiting(self, delta: int, reason: str = "", wait_s: float = 0.0) -> None:
        """A read started (+1) or stopped (-1) waiting out an outage; the first logs it."""
        with self._lock:
            self._waiting += delta
            first = delta > 0 and self._outage_at is None
            if first:
                self._outage_at = self._clock()
        if first:
            log.warning("s3_unavailable", reason=reason, waiting_up_to_s=wait_s)

    def failing_s(self) -> float:
        """Seconds every read has failed (0 when the last read succeeded or none is retrying)."""
        with self._lock:
            since = self._failing_since
        return 0.0 if since is None else self._clock() - since
