"""Whether the object store serves reads: an outage is waited out, not turned into verdicts.

A read that fails with a transient error (a connection refused, a 5xx, throttling, a timeout)
is retried `s3.max_attempts` times. When those run out while the store served other reads
during this one's last try, the object itself is the problem: the read gives up (FETCH_FAILED).
When the store has served no read since, and it either said it cannot serve now (throttling, a
503) or does not answer a HEAD of the bucket either, it is down for everyone, and giving up would
turn every upload in flight into an error verdict that nobody judges again: the read keeps
retrying until the store answers or `s3.outage_wait_s` has passed. Meanwhile the consumer's
in-flight limit pauses its partitions, so uploads wait in Kafka instead.

`StoreOutage` (a moderator.outage.Outage) keeps the times this needs, logs the outage's start
and end once each, and answers the `s3` readiness check (moderator/obs/store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from moderator.outage import Outage

log = structlog.get_logger("moderator.fetch")


class StoreOutage(Outage):
    """Reads served and reads failing, as times; safe to use from every fetch thread."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("s3", wait_s, log, clock)
        self._retrying = 0  # reads between their first transient failure and their end

    def retrying(self, delta: int) -> None:
        """A read started (+1) or ended (-1) retrying; with none left, no failure is current."""
        with self._lock:
            self._retrying += delta
            if self._retrying == 0:
                self._failing_since = None

    def failing_s(self) -> float:
        """Seconds every read has failed (0 when the last read succeeded or none is retrying)."""
        with self._lock:
            since = self._failing_since
        return 0.0 if since is None else self._clock() - since
