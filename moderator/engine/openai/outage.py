"""Whether the model server answers: an outage is waited out, not turned into verdicts.

A request that fails with a transient error (a connection refused or dropped, a 429 or 5xx, a
timeout) is retried `engine.openai.attempts` times within `engine.timeout_s`. When those run out
while another request has succeeded since this one started, or the server answers `GET
/models`, the request itself is the problem: it becomes an `engine_error` (or
`engine_timeout`) verdict. When no request has succeeded since and the server does not answer
either, it is down for everyone, and giving up would turn every upload in flight into a verdict
that nobody judged: the request keeps trying, about once a second, until the server answers or
`engine.outage_wait_s` has passed since it started. Meanwhile the engine window holds the
requests behind it and the consumer's in-flight limit pauses its partitions, so uploads wait
in Kafka instead.

`ServerOutage` keeps the times this needs, logs the outage's start and end once each, and
tells the engine window (moderator/engine/window.py: no request times out while requests wait)
and the `engine` readiness check (moderator/obs/engine.py) about it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog

from moderator.engine.openai.retry import StatusError, retryable

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("moderator.engine.openai")

T = TypeVar("T")

WAIT_RETRY_S = 1.0  # between the tries of a request that waits out an outage
OUTAGE_PROBE_S = 5.0  # the outage probe's GET /models: a server that is up answers at once


def unreachable(exc: BaseException) -> bool:
    """A failure that may say the server is down or overloaded: one that is retried, or the
    request's own deadline running out (a server that accepts connections and never answers)."""
    return isinstance(exc, TimeoutError) or retryable(exc)


async def server_answers(client: httpx.AsyncClient, url: str, timeout_s: float) -> bool:
    """Whether `GET url` gets an answer that is neither a 5xx nor a 429 (a 401 or 404 too: the
    server is up, it only dislikes the question)."""
    import httpx

    try:
        response = await client.get(url, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return not StatusError(response.status_code, "").retryable


class ServerOutage:
    """Requests answered and requests waiting, as times (this clock); `answered`, `failed`,
    `waiting` and `down` are called on the client's event-loop thread, the readers from any."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._answered_at = float("-inf")
        self._failing_since: float | None = None  # the first failure since the server was up
        self._waiting = 0  # requests past their attempts, waiting out an outage
        self._outage_at: float | None = None  # when the first request started waiting
        self._waited_at = float("-inf")  # when a request last stopped waiting
        self._probe: asyncio.Future[bool] | None = None  # the one probe in flight, if any

    def now(self) -> float:
        return self._clock()

    def answered(self) -> None:
        """A request succeeded, or the probe was answered: the server is up."""
        with self._lock:
            now = self._clock()
            self._answered_at = now
            failing_since, self._failing_since = self._failing_since, None
            outage_at, self._outage_at = self._outage_at, None
            waiting = self._waiting
        if outage_at is not None:  # timed from the first failure, not from the first wait
            since = outage_at if failing_since is None else min(failing_since, outage_at)
            log.info("engine_available_again", unavailable_s=round(now - since, 1), waiting=waiting)

    def failed(self) -> None:
        """A request's try failed with an error that may say the server is down."""
        with self._lock:
            if self._failing_since is None:
                self._failing_since = self._clock()

    def answered_since(self, started: float) -> bool:
        with self._lock:
            return self._answered_at >= started

    def waiting(self, delta: int, reason: str = "") -> None:
        """A request started (+1) or stopped (-1) waiting out an outage; the first logs it."""
        with self._lock:
            now = self._clock()
            self._waiting += delta
            self._waited_at = now
            first = delta > 0 and self._outage_at is None
            if first:
                self._outage_at = now
        if first:
            log.warning("engine_unavailable", reason=reason, waiting_up_to_s=self.wait_s)

    def any_waiting(self) -> bool:
        """Whether a request is waiting out an outage now."""
        with self._lock:
            return self._waiting > 0

    def waited_at(self) -> float:
        """Now while a request waits out an outage, else when one last stopped (-inf if none
        ever did): the engine window counts no request's time out before this."""
        with self._lock:
            return self._clock() if self._waiting else self._waited_at

    def waiting_s(self) -> float:
        """While requests wait out an outage, seconds since the first failure of it; else 0."""
        with self._lock:
            if not self._waiting:
                return 0.0
            since = self._failing_since if self._failing_since is not None else self._outage_at
            return 0.0 if since is None else self._clock() - since

    async def down(self, started: float, probe: Callable[[], Awaitable[bool]]) -> bool:
        """Whether the server is down for everyone: no request has succeeded since `started`
        (this clock) and `probe` finds no server either. Requests that fail together share one
        probe. Never once `wait_s` has passed since `started` (with `wait_s` 0, never at all)."""
        if self.wait_s <= 0 or self.now() - started >= self.wait_s:
            return False
        if not self.answered_since(started):
            if self._probe is None:
                self._probe = asyncio.ensure_future(probe())
                self._probe.add_done_callback(self._probed)
            if not await asyncio.shield(self._probe):
                return True
        with self._lock:  # the server works: this failure is not one of an outage
            self._failing_since = None
        return False

    def _probed(self, probe: asyncio.Future[bool]) -> None:
        self._probe = None
        if not probe.cancelled() and probe.exception() is None and probe.result():
            self.answered()

    async def wait_out(self, attempt: Callable[[], Awaitable[T]], started: float, reason: str) -> T:
        """Try `attempt` about once a second, quietly, until it succeeds, fails otherwise than
        by an outage, or `wait_s` has passed since `started`: its last failure is raised then.
        Once waiting, a request gives up only then: a try that was in flight when the server
        came back does not end it."""
        self.waiting(1, reason)
        try:
            while True:
                await asyncio.sleep(WAIT_RETRY_S)
                try:
                    return await attempt()
                except Exception as exc:
                    if not unreachable(exc) or self.now() - started >= self.wait_s:
                        raise
        finally:
            self.waiting(-1)
