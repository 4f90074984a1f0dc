"""Whether the model server answers: an outage is waited out, not turned into verdicts.

A request that fails with a transient error (a connection refused or dropped, a 429 or 5xx, a
timeout) is retried `engine.openai.attempts` times within `engine.timeout_s`. When those run out
while another request has succeeded since this one started, the request itself is the problem:
it becomes an `engine_error` (or `engine_timeout`) verdict; so it does when its last answer was
a 500 and the server answers `GET /models`. When no request has succeeded since, and the last
answer said the server cannot take work now (429, 502, 503, 504: a gateway in front of a
stopped model server answers so, and may answer `GET /models` itself), or the server does not
answer `GET /models` either, it is down for everyone, and giving up would turn every upload in
flight into a verdict that nobody judged: the request keeps trying, about once a second, until
the server answers or `engine.outage_wait_s` has passed since it started. Meanwhile the engine
window holds the requests behind it and the consumer's in-flight limit pauses its partitions, so
uploads wait in Kafka instead.

`ServerOutage` (a moderator.outage.Outage) keeps the times this needs, logs the outage's start
and end once each, and tells the engine window (moderator/engine/window.py: no request times
out while requests wait) and the `engine` readiness check (moderator/obs/engine.py) about it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog

from moderator.engine.openai.retry import StatusError, retryable
from moderator.outage import Outage

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


class ServerOutage(Outage):
    """Requests answered and requests waiting, as times (this clock); `answered`, `failed`,
    `waiting` and `down` are called on the client's event-loop thread, the readers from any."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("engine", wait_s, log, clock)
        self._probe: asyncio.Future[bool] | None = None  # the one probe in flight, if any

    async def down(
        self, started: float, probe: Callable[[], Awaitable[bool]], unavailable: bool = False
    ) -> bool:
        """Whether the server is down for everyone: no request has succeeded since `started`
        (this clock), and either the failure said that the server cannot take work now
        (`unavailable`: a 429, 502, 503 or 504, also from a gateway that answers `GET /models`
        itself) or `probe` finds no server. Requests that fail together share one probe. Never
        once `wait_s` has passed since `started` (with `wait_s` 0, never at all)."""
        if self.expired(started):
            return False
        if not self.answered_since(started):
            if unavailable:
                return True
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
                    if not unreachable(exc) or self.expired(started):
                        raise
        finally:
            self.waiting(-1)
