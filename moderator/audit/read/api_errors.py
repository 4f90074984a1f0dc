"""How the audit HTTP API answers a failure: a one-line `detail` naming the parameter, the
status codes of the errors its domain raises, and the error responses its OpenAPI lists."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from moderator.audit.errors import AuditError, AuditUnavailable, InvalidQuery
from moderator.audit.read.api_models import ErrorBody
from moderator.audit.read.filters import shown

log = structlog.get_logger("moderator.audit.api")

NOT_FOUND = "not found, or not visible to this token"
UNAVAILABLE_LOG_EVERY_S = 30.0  # the same cause is logged again at most this often
UNPROCESSABLE = (422, "a parameter has the wrong type, is unknown or is given twice")
UNAUTHORIZED = (401, "missing or unknown bearer token")


def responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses: every endpoint may answer 503; authenticated ones 401."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in codes
    }
    out[503] = {"model": ErrorBody, "description": "the audit database is unreachable"}
    return out


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def add_error_handlers(app: FastAPI) -> None:
    """503 for an unreachable or unusable database (without its URL), 400 for a bad filter
    value, and FastAPI's validation errors as one line."""
    app.exception_handler(AuditUnavailable)(_unavailable)
    # Any other store failure (a file that is not a database, a schema newer than this
    # release): the store is unusable for now, the same 503 and one line, not a traceback.
    app.exception_handler(AuditError)(_unavailable)
    app.exception_handler(InvalidQuery)(_invalid)
    app.exception_handler(RequestValidationError)(_unprocessable)


async def _unavailable(_request: Request, exc: AuditError) -> JSONResponse:
    UNAVAILABLE_LOG.seen(str(exc))
    return JSONResponse({"detail": "audit database unavailable"}, status_code=503)


class UnavailableLog:
    """Logs why the API answers 503 (the store's one-line error, its password masked): a
    warning for each new cause, and again for the same one at most every `every_s`, so that an
    outage under load is a few lines, not one per request. Clients only see that it is down."""

    def __init__(self, every_s: float = UNAVAILABLE_LOG_EVERY_S) -> None:
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last: tuple[str, float] | None = None
        self._answered = 0  # 503s since the last line

    def seen(self, cause: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._answered += 1
            last = self._last
            if last is not None and last[0] == cause and now - last[1] < self._every_s:
                return
            self._last, answered, self._answered = (cause, now), self._answered, 0
        log.warning("audit_api_store_unavailable", error=cause, answered_503=answered)


UNAVAILABLE_LOG = UnavailableLog()


async def _invalid(_request: Request, exc: InvalidQuery) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def _unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)


def validation_detail(errors: Sequence[Any]) -> str:
    """FastAPI's list of validation errors as one line naming the first bad parameter."""
    first = errors[0] if errors else {}
    loc = first.get("loc", ()) if isinstance(first, dict) else ()
    name = str(loc[-1]) if loc else "request"
    message = str(first.get("msg", "invalid")) if isinstance(first, dict) else "invalid"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{param_label(name)}: {message}{more}".split())


def param_label(name: str) -> str:
    """A parameter name as an error names it: bare when it looks like one, else quoted."""
    return name if name.isidentifier() and len(name) <= 40 else shown(name)
