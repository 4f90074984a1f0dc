"""The read-only audit HTTP API (`moderator audit serve`), built by `create_app`.

Auth: a bearer token, looked up by its SHA-256 hex in `tokens` (audit.api_tokens), names the
tenants whose rows it may read (`*`: all). The scope is applied inside the store query, so a
token never receives another tenant's rows: a `tenant` filter outside the scope is 403, and a
verdict or policy version of another tenant is 404 (its existence is not disclosed).
Responses carry no row ids, chain positions or Kafka offsets (`api_models` says why), and every
bad parameter is a 400 or 422 with a one-line `detail`. The endpoints are in `api_routes`, the
token check in `api_auth`, the error answers in `api_errors`; an explanation's `row_origin` is
read from the policy directory by `row_origin`, as `moderator explain` reads it.
Needs the `api` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response

from moderator import __version__
from moderator.audit.db.store import AuditStore
from moderator.audit.read.api_auth import scopes_from_tokens
from moderator.audit.read.api_errors import add_error_handlers
from moderator.audit.read.api_routes import StoreHolder, router

if TYPE_CHECKING:
    from moderator.explain.model import Explanation

PAGES_AT_ONCE = 4
"""Pages of verdicts read and written at once; more wait their turn. A page of 1,000 items
holds several MB while it is read and serialised, so the process's memory is bounded by this,
not by how many clients ask at once."""

DESCRIPTION = (
    "Read-only access to moderation verdicts and the policy versions they were decided under. "
    "Every endpoint but /healthz needs `Authorization: Bearer TOKEN`; a token reads only its "
    "tenants' rows."
)


def create_app(
    store_factory: Callable[[], AuditStore],
    tokens: Mapping[str, Sequence[str]],
    origins: Callable[[Explanation], Explanation] | None = None,
) -> FastAPI:
    """The API over one store. `tokens` maps SHA-256 hex of a token to its tenants (or `*`).
    The store is opened on the first request that needs it and closed when the app stops.
    `origins` adds where an explained row was set (`row_origin.PolicyOrigins`); without it
    explanations have no `policy.row_origin`."""
    holder = StoreHolder(store_factory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        holder.close()

    app = FastAPI(
        title="moderator audit API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /openapi.json is a route of its own that needs a token (api_routes); no interactive
        # pages: Swagger UI and ReDoc would load their scripts from a CDN.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.scopes = scopes_from_tokens(tokens)
    app.state.store = holder
    app.state.origins = _unchanged if origins is None else origins
    add_error_handlers(app)
    app.include_router(router)

    pages = asyncio.Semaphore(PAGES_AT_ONCE)

    @app.middleware("http")
    async def private(request: Request, call_next: Any) -> Response:
        response: Response
        if request.url.path == "/v1/verdicts":
            async with pages:
                response = await call_next(request)
        else:
            response = await call_next(request)
        # Answers name tenants, users and objects: no proxy or browser may keep them, nor
        # read them as anything but their declared type.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


def _unchanged(explanation: Explanation) -> Explanation:
    return explanation
