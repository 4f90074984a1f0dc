"""The read-only audit HTTP API (`moderator audit serve`), built by `create_app`.

Auth: a bearer token, looked up by its SHA-256 hex in `tokens` (audit.api_tokens), names the
tenants whose rows it may read (`*`: all). The scope is applied inside the store query, so a
token never receives another tenant's rows: a `tenant` filter outside the scope is 403, and a
verdict or policy version of another tenant is 404 (its existence is not disclosed).
Responses carry no row ids, chain positions or Kafka offsets (`api_models` says why), and every
bad parameter is a 400 or 422 with a one-line `detail`.
Needs the `api` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from moderator import __version__
from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditUnavailable, InvalidQuery
from moderator.audit.models import AuditQuery, text_problem
from moderator.audit.read.api_models import (
    ErrorBody,
    Health,
    PolicyVersion,
    VerdictFilters,
    VerdictItem,
    VerdictPage,
)
from moderator.audit.read.filters import Filters, build_query, shown
from moderator.audit.read.tokens import token_hash

__all__ = ["create_app", "scopes_from_tokens", "token_hash"]

StoreFactory = Callable[[], AuditStore]
ALL_TENANTS = "*"


@dataclass(frozen=True)
class Scope:
    """The tenants a token may read; None = all of them."""

    tenants: frozenset[str] | None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def restriction(self) -> tuple[str, ...] | None:
        """The store query's `tenant_ids` (None: unrestricted)."""
        return None if self.tenants is None else tuple(sorted(self.tenants))


def scopes_from_tokens(tokens: Mapping[str, Sequence[str]]) -> dict[str, Scope]:
    return {
        digest.strip().lower(): Scope(None if ALL_TENANTS in tenants else frozenset(tenants))
        for digest, tenants in tokens.items()
    }


class _StoreHolder:
    """Opens the store on first use (so the app starts even while the database is down) and
    keeps it for the app's lifetime."""

    def __init__(self, factory: StoreFactory) -> None:
        self._factory = factory
        self._store: AuditStore | None = None
        self._lock = threading.Lock()

    def get(self) -> AuditStore:
        with self._lock:
            if self._store is None:
                self._store = self._factory()
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


_NOT_FOUND = "not found, or not visible to this token"


def _errors(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses: every endpoint may answer 503; authenticated ones 401."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in codes
    }
    out[503] = {"model": ErrorBody, "description": "the audit database is unreachable"}
    return out


_UNPROCESSABLE = (422, "a parameter has the wrong type, is unknown or is given twice")
_UNAUTHORIZED = (401, "missing or unknown bearer token")
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="a token whose SHA-256 hex is a key of audit.api_tokens",
)


def _scope(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Scope:
    """The caller's tenants, from `app.state.scopes` (set by create_app); 401 without one."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    scopes: dict[str, Scope] = request.app.state.scopes
    found = scopes.get(token_hash(credentials.credentials))
    if found is None:
        raise _unauthorized("unknown bearer token")
    return found


Auth = Annotated[Scope, Depends(_scope)]


def _once_each(request: Request) -> None:
    """422 for a query parameter given twice: each is one value, and which of two would count
    is not something a caller should have to guess."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise HTTPException(422, f"{_label(name)}: given more than once")
        seen.add(name)


def create_app(store_factory: StoreFactory, tokens: Mapping[str, Sequence[str]]) -> FastAPI:
    """The API over one store. `tokens` maps SHA-256 hex of a token to its tenants (or `*`)."""
    scopes = scopes_from_tokens(tokens)
    holder = _StoreHolder(store_factory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        holder.close()

    app = FastAPI(
        title="moderator audit API",
        version=__version__,
        description="Read-only access to moderation verdicts and the policy versions they were "
        "decided under. Every endpoint but /healthz needs `Authorization: Bearer TOKEN`; a "
        "token reads only its tenants' rows.",
        lifespan=lifespan,
    )
    app.state.scopes = scopes

    @app.exception_handler(AuditUnavailable)
    async def _unavailable(_request: Request, _exc: AuditUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "audit database unavailable"}, status_code=503)

    @app.exception_handler(InvalidQuery)
    async def _invalid(_request: Request, exc: InvalidQuery) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    @app.get(
        "/v1/verdicts",
        summary="List verdicts matching filters, one page at a time",
        response_model=VerdictPage,
        responses=_errors(
            (400, "a filter value is invalid"),
            _UNAUTHORIZED,
            (403, "`tenant` is not one of the token's"),
            _UNPROCESSABLE,
        ),
    )
    def list_verdicts(
        auth: Auth,
        params: Annotated[VerdictFilters, Query()],
        _once: Annotated[None, Depends(_once_each)],
    ) -> VerdictPage:
        """Newest first by default. Without `tenant` the rows of every tenant of the token."""
        if params.tenant is not None and not auth.allows(params.tenant):
            raise HTTPException(403, f"this token may not read tenant {shown(params.tenant)}")
        filters = Filters(
            **params.model_dump(exclude={"sort", "limit", "cursor"}),
        )
        query = build_query(
            filters,
            sort=params.sort,
            limit=params.limit,
            cursor=params.cursor,
            tenant_ids=auth.restriction(),
        )
        page = holder.get().query(query)
        return VerdictPage(
            items=[VerdictItem.from_row(row) for row in page.rows], next_cursor=page.next_cursor
        )

    @app.get(
        "/v1/verdicts/{event_id}",
        summary="One verdict with its audit record",
        response_model=VerdictItem,
        responses=_errors(_UNAUTHORIZED, (404, _NOT_FOUND), _UNPROCESSABLE),
    )
    def get_verdict(
        auth: Auth, event_id: Annotated[str, Path(description="the upload event id")]
    ) -> VerdictItem:
        # What no database can compare (a NUL, say) names no stored verdict either.
        row = None if text_problem(event_id) else holder.get().get(event_id)
        if row is None or not auth.allows(row.tenant_id):
            raise HTTPException(404, "no such verdict")
        return VerdictItem.from_row(row)

    @app.get(
        "/v1/policy-versions/{policy_hash}",
        summary="The prompt text and decision table of a policy version",
        response_model=PolicyVersion,
        responses=_errors(_UNAUTHORIZED, (404, _NOT_FOUND), _UNPROCESSABLE),
    )
    def get_policy_version(
        auth: Auth,
        policy_hash: Annotated[
            str,
            Path(description="64-hex policy hash (or its 16-hex version prefix)"),
        ],
    ) -> PolicyVersion:
        """Visible only when a verdict of one of the token's tenants was decided under it."""
        key = policy_hash.strip().lower()
        try:
            query = build_query(Filters(policy_version=key), limit=1, tenant_ids=auth.restriction())
        except InvalidQuery:
            raise HTTPException(404, "no such policy version") from None
        store = holder.get()
        rows = store.query(query).rows
        full = rows[0].policy_hash if rows else None
        document = store.policy_version(full) if full else None
        if full is None or document is None:
            raise HTTPException(404, "no such policy version")
        return PolicyVersion(
            policy_hash=full,
            version=full[:16],
            tenant_id=document.get("tenant_id"),
            prompt=document.get("prompt"),
            decision_table=document.get("decision_table"),
            document=document,
        )

    @app.get(
        "/healthz",
        summary="Liveness and database reachability (no token needed)",
        response_model=Health,
        responses=_errors(),
    )
    def healthz() -> Health:
        holder.get().query(AuditQuery(limit=1))
        return Health()

    return app


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def validation_detail(errors: Sequence[Any]) -> str:
    """FastAPI's list of validation errors as one line naming the first bad parameter."""
    first = errors[0] if errors else {}
    loc = first.get("loc", ()) if isinstance(first, dict) else ()
    name = str(loc[-1]) if loc else "request"
    message = str(first.get("msg", "invalid")) if isinstance(first, dict) else "invalid"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{_label(name)}: {message}{more}".split())


def _label(name: str) -> str:
    """A parameter name as an error names it: bare when it looks like one, else quoted."""
    return name if name.isidentifier() and len(name) <= 40 else shown(name)
