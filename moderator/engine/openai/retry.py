"""When and how long the `openai` engine's client waits before trying a request again: HTTP
429 and 5xx answers, timeouts and dropped connections are retried with capped exponential
backoff and jitter, honouring a server's Retry-After. A connection dropped without an answer
is retried once at once: that is a pooled keep-alive connection the server closed as it was
reused, or a handshake the server had no room for, not a server in trouble.

httpx is imported lazily, so this module imports without the `openai` extra.
"""

from __future__ import annotations

import functools
import random

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from moderator.engine.openai.request import describe

log = structlog.get_logger("moderator.engine.openai")

# Answers that say the server has more work than it can take: the in-flight limit shrinks.
OVERLOAD_STATUSES = frozenset({429, 503, 504})
# Answers that say the server cannot take work now, not that this request is bad: with no
# request answered meanwhile, they are an outage (outage.py) whether or not GET /models answers.
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


class StatusError(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def unavailable(self) -> bool:
        return self.status in UNAVAILABLE_STATUSES


class BadResponse(Exception):
    """A 2xx answer that is not the documented chat.completion shape."""


def retrying(
    attempts: int, backoff_s: float, backoff_max_s: float, label: str | None = None
) -> AsyncRetrying:
    """Up to `attempts` tries of the retryable failures, re-raising the last one. `label`
    (the request id, `EVENT_ID#FRAME`) is on each retry's log line."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_Backoff(backoff_s, backoff_max_s),
        retry=retry_if_exception(retryable),
        before_sleep=functools.partial(_log_retry, label),
        reraise=True,
    )


class _Backoff(wait_base):
    """Exponential backoff (initial x 2^n, capped) plus up to `initial` of random jitter; a
    server's Retry-After (capped) is waited at least. A first attempt whose connection dropped
    without an answer is retried at once."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._max = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if retry_state.attempt_number == 1 and _dropped(exc):
            return 0.0
        exponent = min(retry_state.attempt_number - 1, 30)
        delay = min(self._max, self._initial * 2.0**exponent + random.uniform(0, self._initial))
        if isinstance(exc, StatusError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._max))
        return delay


def retryable(exc: BaseException) -> bool:
    """A failure worth another try: a 429 or 5xx answer, a timeout, a connection refused or
    dropped."""
    import httpx

    if isinstance(exc, StatusError):
        return exc.retryable
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def _dropped(exc: BaseException | None) -> bool:
    """The connection went away without an answer (not: could not connect, timed out)."""
    import httpx

    return isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)


def _log_retry(label: str | None, retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    log.warning(
        "openai_request_retry",
        request_id=label,
        attempt=retry_state.attempt_number,
        error=str(exc) if isinstance(exc, StatusError) else describe(exc) if exc else None,
        wait_s=round(retry_state.upcoming_sleep, 3),
    )
