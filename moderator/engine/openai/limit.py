"""How many requests the `openai` engine keeps open at once: a limit that adapts to what the
server can take (additive increase, multiplicative decrease), or a fixed one.

A continuous-batching server (lmdeploy, vLLM, SGLang) is full when each of its batch slots
holds a request and a few more wait to take a slot the moment one frees up. The client cannot
see the slots, only how long its requests take: while the server has free slots, more requests
in flight cost little latency; once they queue, each extra request adds its share of a service
time, so latency grows in proportion to the requests in flight. The limit therefore grows
while latency stays near the lowest recently seen and shrinks when it rises well above it, or
when the server says it is overloaded.

It works in rounds: a round closes once as many answers as the limit have come back from
requests sent since the limit last changed (about one round trip). At the close of a round,
with m the round's median latency and base the lowest round median since the last probe (m
included):
- m > tolerance x base: the limit shrinks to 0.9 x its value (latency rise: requests queue);
- otherwise, if requests in flight reached the limit during the round, it grows: doubling
  per round at first (slow start), by one per round once m has passed sqrt(tolerance) x base
  or the limit has shrunk once;
- otherwise (fewer requests than the limit to send) it stays.
An overload answer (HTTP 429, 503, 504, or a timeout) halves the limit at once, at most once
per round trip. The limit stays between 1 and `maximum`.

With requests always queued at the server, no round shows the unqueued latency, and a base
measured long ago may no longer hold (the server may have become slower or faster). So when no
round has come close to base (within 10%) for `probe_after_s` seconds, one round runs at a
quarter of the limit, few enough requests for the server's queue to drain (a probe): its median
becomes the base, and the limit returns to its value. This comes before the latency rule: a
server that became slower for good (busier with other clients) would otherwise shrink the limit
round after round down to 1 and keep it there. At a limit of 1 a round over the tolerance (or
a stale base) is itself the probe: one request at a time queues nothing of ours, so its median
becomes the base and the limit grows again from there, doubling per round.

The base is measured with few requests running, so it is lower than the latency of a full
batch; the tolerance (2.5 by default) leaves room for that rise and for a queue behind it. A
server whose full batch takes more than about twice as long as a small one needs a higher
tolerance to be kept full.

Everything runs on the client's event-loop thread; `limit` may be read from any thread.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

INITIAL_LIMIT = 8  # where an adaptive limit starts (never above its maximum)
LATENCY_DECREASE = 0.9
OVERLOAD_DECREASE = 0.5
DEFAULT_TOLERANCE = 2.5
DEFAULT_PROBE_AFTER_S = 20.0
_NEAR_BASE = 1.1  # a round this close to base confirms it
PROBE_SHARE = 4  # a probe round runs at limit // PROBE_SHARE
_MIN_HOLD_S = 0.05  # after an overload cut, the next one waits at least this long


class InFlightLimit:
    """The most requests to have open at once; fixed at `maximum` unless `adaptive`.

    Counters for tests and benchmarks: `decreases` (times the limit shrank) and `probes`
    (rounds run at a quarter of the limit to measure the base latency afresh).
    """

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool = True,
        tolerance: float = DEFAULT_TOLERANCE,
        probe_after_s: float = DEFAULT_PROBE_AFTER_S,
        initial: int = INITIAL_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maximum < 1 or tolerance <= 1 or probe_after_s <= 0 or initial < 1:
            raise ValueError("invalid in-flight limit settings")
        self.maximum = maximum
        self.adaptive = adaptive
        self._tolerance = tolerance
        self._probe_after_s = probe_after_s
        self._clock = clock
        self._limit = min(maximum, initial) if adaptive else maximum
        self._slow_start = True
        self._base: float | None = None  # the lowest round median since the last probe
        self._round: list[float] = []
        self._peak = 0  # most requests in flight during this round
        self._epoch = 0  # counts changes: answers to requests sent before one are not used
        self._hold_until = 0.0  # no overload cut before this time
        self._confirmed = clock()  # when a round last came close to base
        self._probing: int | None = None  # the limit to return to after a probe round
        self.decreases = 0
        self.probes = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def baseline_s(self) -> float | None:
        """The lowest round median latency since the last probe, if any round has closed."""
        return self._base

    def started(self, in_flight: int) -> int:
        """A request is about to be sent with `in_flight` open, itself included; the epoch to
        hand back with its answers."""
        self._peak = max(self._peak, in_flight)
        return self._epoch

    def answered(self, latency_s: float, epoch: int) -> None:
        """A request started in `epoch` was answered (2xx) after `latency_s`. Answers to
        requests sent before the limit last changed tell of the old limit and are left out."""
        if not self.adaptive or epoch != self._epoch:
            return
        self._round.append(latency_s)
        if len(self._round) >= self._limit:
            self._close_round()

    def overloaded(self) -> None:
        """The server answered 429, 503 or 504, or a request timed out."""
        if not self.adaptive:
            return
        now = self._clock()
        if now < self._hold_until:
            return  # the same episode: one cut per round trip
        base = self.baseline_s
        self._hold_until = now + max(_MIN_HOLD_S, base if base is not None else 1.0)
        if self._probing is not None:
            self._probing = None  # the server is overloaded: stay at the probe's limit
        self._set(max(1, math.floor(self._limit * OVERLOAD_DECREASE)), decrease=True)

    def _close_round(self) -> None:
        now = self._clock()
        median = statistics.median(self._round)
        if self._probing is not None:  # the queue has drained: the base as it is now
            restore, self._probing = self._probing, None
            self._base, self._confirmed = median, now
            self._set(restore)
            return
        base = median if self._base is None else min(self._base, median)
        self._base = base
        if median <= _NEAR_BASE * base:
            self._confirmed = now
        stale = now - self._confirmed >= self._probe_after_s
        if self._limit == 1 and (stale or median > self._tolerance * base):
            # One request at a time queues nothing of ours: this round is the base as it is
            # now (a server that became slower for good), and the limit grows from it again.
            self.probes += 1
            self._base, self._confirmed = median, now
            self._slow_start = True
            self._new_round()
        elif stale:
            # The base is stale, whether latency rose because requests queue or because the
            # server became slower: checked before the latency rule, which would otherwise
            # shrink the limit round after round against the old base.
            self.probes += 1
            self._probing = self._limit
            self._set(max(1, self._limit // PROBE_SHARE))
        elif median > self._tolerance * base:
            self._set(max(1, math.floor(self._limit * LATENCY_DECREASE)), decrease=True)
        elif self._peak >= self._limit and self._limit < self.maximum:
            if median > math.sqrt(self._tolerance) * base:
                self._slow_start = False  # latency has started to rise: approach slowly
            grown = self._limit * 2 if self._slow_start else self._limit + 1
            self._set(min(self.maximum, grown))
        else:
            self._new_round()

    def _set(self, limit: int, *, decrease: bool = False) -> None:
        """A new limit (and a new round, whose answers come from requests sent under it)."""
        if decrease:
            self._slow_start = False
        if limit != self._limit:
            self.decreases += 1 if decrease else 0
            self._limit = limit
            self._epoch += 1
        self._new_round()

    def _new_round(self) -> None:
        self._round = []
        self._peak = 0
