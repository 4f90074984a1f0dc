"""What a request of the `openai` engine that got no answer turns into: a Failure, whose code
and one-line message reach its verdict.

httpx is imported lazily, so this module imports without the `openai` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from moderator.engine.openai.body import AnswerTooLarge, UnreadableAnswer
from moderator.engine.openai.request import describe, hint, tries
from moderator.engine.openai.retry import BadResponse, StatusError
from moderator.errors import ErrorCode


@dataclass(frozen=True)
class Failure:
    """Why one request got no answer."""

    code: ErrorCode
    message: str


def failure(
    exc: Exception, shown: str, timeout_s: float, attempts: int, waited: float | None = None
) -> Failure:
    """The Failure of a request to `shown` (the base URL, passwords masked) that ended with
    `exc` after `attempts` tries, `waited` seconds when it waited out an outage; anything
    unforeseen is raised again."""
    import httpx

    tried = tries(attempts)
    if waited is not None:
        tried += f" over {waited:.0f} s, the server answering no request"
    if isinstance(exc, TimeoutError):  # the request's own deadline
        within = f" within {timeout_s:g}s" if waited is None else ""
        if attempts == 0:  # queued behind other requests for the whole budget
            return Failure(
                ErrorCode.ENGINE_TIMEOUT,
                f"not sent to {shown}{within}: every request slot stayed taken "
                "(engine.openai.max_in_flight, or the adaptive limit below it)",
            )
        return Failure(ErrorCode.ENGINE_TIMEOUT, f"no answer from {shown}{within} ({tried})")
    if isinstance(exc, httpx.TimeoutException):
        return Failure(ErrorCode.ENGINE_TIMEOUT, f"{shown} timed out ({describe(exc)}; {tried})")
    if isinstance(exc, StatusError):
        return Failure(ErrorCode.ENGINE_ERROR, status_message(exc, shown, tried))
    if isinstance(exc, httpx.HTTPError):
        return Failure(ErrorCode.ENGINE_ERROR, f"cannot reach {shown}: {describe(exc)} ({tried})")
    if isinstance(exc, AnswerTooLarge):
        # Not retried: the same request would most likely bring the same answer again.
        return Failure(
            ErrorCode.ENGINE_ERROR,
            f"{shown}: {exc} (engine.openai.max_response_bytes; not retried)",
        )
    if isinstance(exc, BadResponse | UnreadableAnswer):
        return Failure(ErrorCode.ENGINE_ERROR, f"{shown}: {exc}")
    raise exc


def status_message(exc: StatusError, shown: str, tried: str) -> str:
    where = f"{shown} answered HTTP {exc.status}: {exc.message}"
    if exc.retryable:
        return f"{where} ({tried})"
    advice = hint(exc.message) if exc.status in (400, 422) else None
    return f"{where} (request rejected, not retried{'; ' + advice if advice else ''})"
