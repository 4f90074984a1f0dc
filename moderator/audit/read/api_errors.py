"""How the audit HTTP API answers a failure: a one-line `detail` naming the parameter, the
status codes of the errors its domain raises, and the error responses its OpenAPI lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from moderator.audit.errors import AuditUnavailable, InvalidQuery
from moderator.audit.read.api_models import ErrorBody
from moderator.audit.read.filters import shown

NOT_FOUND = "not found, or not visible to this token"
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
    """503 for an unreachable database (without its URL), 400 for a bad filter value, and
    FastAPI's validation errors as one line."""
    app.exception_handler(AuditUnavailable)(_unavailable)
    app.exception_handler(InvalidQuery)(_invalid)
    app.exception_handler(RequestValidationError)(_unprocessable)


async def _unavailable(_request: Request, _exc: AuditUnavailable) -> JSONResponse:
    return JSONResponse({"detail": "audit database unavailable"}, status_code=503)


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
