"""The read-only audit HTTP API (`moderator audit serve`), built by `create_app`.

Auth: a bearer token, looked up by its SHA-256 hex in `tokens` (audit.api_tokens), names the
tenants whose rows it may read (`*`: all). The scope is applied inside the store query, so a
token never receives another tenant's rows: a `tenant` filter outside the scope is 403, and a
verdict or policy version of another tenant is 404 (its existence is not disclosed).
Needs the `api` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from moderator import __version__
from moderator.audit.errors import AuditUnavailable, InvalidQuery
from moderator.audit.filters import TIME_HELP, Filters, build_query
from moderator.audit.models import MAX_LIMIT, AuditQuery
from moderator.audit.rows import AuditItem
from moderator.audit.store import AuditStore

StoreFactory = Callable[[], AuditStore]
ALL_TENANTS = "*"


class ErrorBody(BaseModel):
    detail: str = Field(description="why the request failed, one line")


class VerdictPage(BaseModel):
    items: list[AuditItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` (with the same filters and sort) for the next page; "
        "null on the last page"
    )


class PolicyVersion(BaseModel):
    policy_hash: str = Field(description="SHA-256 hex of the compiled policy document")
    version: str = Field(description="its 16-hex prefix, as verdicts name it")
    tenant_id: str | None
    prompt: str | None = Field(description="the prompt text sent to the guard model")
    decision_table: Any = Field(description="category → action rules, as compiled")
    document: dict[str, Any] = Field(description="the whole compiled policy document")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class VerdictFilters(BaseModel):
    """Query parameters of GET /v1/verdicts (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, description="tenant id (must be one of the token's)")
    event_id: str | None = None
    bucket: str | None = Field(None, description="object bucket")
    object_key: str | None = Field(None, description="exact object key")
    sha256: str | None = Field(None, description="image content SHA-256 (64 hex)")
    decision: Literal["allow", "review", "block"] | None = None
    category: str | None = Field(None, description="code (O1..O9, NA) or full category string")
    policy_version: str | None = Field(None, description="16-hex version or 64-hex policy hash")
    model: str | None = Field(None, description="ENGINE or ENGINE:NAME")
    since: str | None = Field(None, description=f"decided at or after; {TIME_HELP}")
    until: str | None = Field(None, description=f"decided before; {TIME_HELP}")
    sort: Literal["decided_at", "-decided_at"] = "-decided_at"
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, description="next_cursor of the previous page")


@dataclass(frozen=True)
class Scope:
    """The tenants a token may read; None = all of them."""

    tenants: frozenset[str] | None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def restriction(self) -> tuple[str, ...] | None:
        """The store query's `tenant_ids` (None: unrestricted)."""
        return None if self.tenants is None else tuple(sorted(self.tenants))


def token_hash(token: str) -> str:
    """What audit.api_tokens is keyed by: `printf %s "$TOKEN" | sha256sum`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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

    @app.get(
        "/v1/verdicts",
        summary="List verdicts matching filters, one page at a time",
        response_model=VerdictPage,
        responses=_errors(
            (400, "a filter value is invalid"),
            _UNAUTHORIZED,
            (403, "`tenant` is not one of the token's"),
        ),
    )
    def list_verdicts(auth: Auth, params: Annotated[VerdictFilters, Query()]) -> VerdictPage:
        """Newest first by default. Without `tenant` the rows of every tenant of the token."""
        if params.tenant is not None and not auth.allows(params.tenant):
            raise HTTPException(403, f"this token may not read tenant {params.tenant!r}")
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
            items=[AuditItem.from_row(row) for row in page.rows], next_cursor=page.next_cursor
        )

    @app.get(
        "/v1/verdicts/{event_id}",
        summary="One verdict with its full audit record",
        response_model=AuditItem,
        responses=_errors(_UNAUTHORIZED, (404, _NOT_FOUND)),
    )
    def get_verdict(
        auth: Auth, event_id: Annotated[str, Path(description="the upload event id")]
    ) -> AuditItem:
        row = holder.get().get(event_id)
        if row is None or not auth.allows(row.tenant_id):
            raise HTTPException(404, "no such verdict")
        return AuditItem.from_row(row)

    @app.get(
        "/v1/policy-versions/{policy_hash}",
        summary="The prompt text and decision table of a policy version",
        response_model=PolicyVersion,
        responses=_errors(_UNAUTHORIZED, (404, _NOT_FOUND)),
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
