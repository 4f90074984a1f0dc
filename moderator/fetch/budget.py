"""A process-wide budget of decode memory: each decode reserves its peak bytes before decoding."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from moderator.errors import ErrorCode, ProcessingError

MiB = 1 << 20
UNLIMITED_DECODE_WAIT_S = 600.0  # without a decode deadline: how long one may wait for budget


class DecodeBudget:
    """At most `total` bytes reserved at once; waiters are served first come, first served.

    First come, first served keeps a large decode from starving behind a stream of small ones
    (the price: small ones wait behind it). A reservation never waits for another while held, so
    waiting cannot deadlock; `max_wait_s` still bounds it, in case a holder is stuck.
    """

    def __init__(self, total: int, max_wait_s: float) -> None:
        if total < 1:
            raise ValueError("decode budget must be positive")
        self.total = total
        self._max_wait_s = max_wait_s
        self._used = 0
        self._peak = 0
        self._queue: deque[int] = deque()
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @property
    def max_wait_s(self) -> float:
        """The longest a reservation waits before it gives up (DECODE_TIMEOUT)."""
        return self._max_wait_s

    @property
    def peak(self) -> int:
        """The most bytes ever reserved at once (never above `total`)."""
        return self._peak

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` for the `with` block.

        Raises ProcessingError: DECOMPRESSION_BOMB at once when `nbytes` is more than the whole
        budget, DECODE_TIMEOUT when the bytes did not come free within `max_wait_s`.
        """
        if nbytes > self.total:
            raise ProcessingError(
                ErrorCode.DECOMPRESSION_BOMB,
                f"decoding needs about {_mib(nbytes)}, more than the whole decode budget "
                f"(fetch.decode_budget_bytes = {_mib(self.total)})",
            )
        self._acquire(max(nbytes, 0))
        try:
            yield
        finally:
            with self._cond:
                self._used -= max(nbytes, 0)
                self._cond.notify_all()

    def _acquire(self, nbytes: int) -> None:
        give_up = time.monotonic() + self._max_wait_s
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while self._queue[0] != ticket or self._used + nbytes > self.total:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise ProcessingError(
                            ErrorCode.DECODE_TIMEOUT,
                            f"waited {self._max_wait_s:g}s for {_mib(nbytes)} of decode budget",
                        )
                    self._cond.wait(left)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now
            self._used += nbytes
            self._peak = max(self._peak, self._used)


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB"


def process_budget(
    budget_bytes: int | None, decode_timeout_s: float | None, decoders: int
) -> DecodeBudget | None:
    """The one budget of a process whose `decoders` threads decode (None: no budget). A wait
    lasts while the decodes ahead use up to their CPU time each, on shared cores: twice that
    in all is the most it should take, so longer means a stuck holder."""
    if budget_bytes is None:
        return None
    per_decode_s = decode_timeout_s if decode_timeout_s is not None else UNLIMITED_DECODE_WAIT_S
    return DecodeBudget(budget_bytes, 2 * decoders * per_decode_s)
