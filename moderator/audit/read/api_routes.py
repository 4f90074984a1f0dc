"""The endpoints of the audit HTTP API, on one router that `create_app` includes.

They read the app's store through `app.state.store` (a `StoreHolder`), the caller's tenants
through `api_auth`, and where an explained row was set through `app.state.origins` (an
`Explanation -> Explanation`: `row_origin.PolicyOrigins` under `audit serve`). A `tenant`
filter outside the token's scope is 403; a verdict or policy version of another tenant is 404,
as if it did not exist.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from moderator.audit.db.store import AuditStore
from moderator.audit.errors import InvalidQuery
from moderator.audit.models import AuditQuery, AuditRow, Page, text_problem
from moderator.audit.read.api_auth import Auth
from moderator.audit.read.api_errors import (
    NOT_FOUND,
    UNAUTHORIZED,
    UNPROCESSABLE,
    param_label,
    responses,
)
from moderator.audit.read.api_models import (
    Health,
    PolicyVersion,
    VerdictExplanation,
    VerdictFilters,
    VerdictItem,
    VerdictPage,
)
from moderator.audit.read.filters import FILTERS, build_query, shown
from moderator.explain.lookup import explain_event
from moderator.explain.model import Explanation
from moderator.explain.render import explanation_json

router = APIRouter()


class StoreHolder:
    """Opens the store on first use (so the app starts even while the database is down) and
    keeps it for the app's lifetime."""

    def __init__(self, factory: Callable[[], AuditStore]) -> None:
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


class ScopedReader:
    """The store as `explain_event` reads it for a token: `get` has the token's tenants in its
    query (`AuditStore.get`), so another tenant's row is never read, as for GET
    /v1/verdicts/{event_id}. `explain_event` scopes its own queries."""

    def __init__(self, store: AuditStore, tenant_ids: tuple[str, ...] | None) -> None:
        self._store = store
        self._tenant_ids = tenant_ids

    def get(self, event_id: str) -> AuditRow | None:
        return self._store.get(event_id, tenant_ids=self._tenant_ids)

    def policy_version(self, policy_hash: str) -> dict[str, Any] | None:
        return self._store.policy_version(policy_hash)

    def query(self, q: AuditQuery) -> Page:
        return self._store.query(q)


def _holder(request: Request) -> StoreHolder:
    holder: StoreHolder = request.app.state.store
    return holder


# The holder, not the store: an endpoint opens the store only once it needs a row.
Store = Annotated[StoreHolder, Depends(_holder)]


def _origins(request: Request) -> Callable[[Explanation], Explanation]:
    origins: Callable[[Explanation], Explanation] = request.app.state.origins
    return origins


# Adds `policy.row_origin` where the policy files still compile to the verdict's version.
Origins = Annotated[Callable[[Explanation], Explanation], Depends(_origins)]


def _once_each(request: Request) -> None:
    """422 for a query parameter given twice: each is one value, and which of two would count
    is not something a caller should have to guess."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise HTTPException(422, f"{param_label(name)}: given more than once")
        seen.add(name)


@router.get(
    "/v1/verdicts",
    summary="List verdicts matching filters, one page at a time",
    response_model=VerdictPage,
    responses=responses(
        (400, "a filter value is invalid"),
        UNAUTHORIZED,
        (403, "`tenant` is not one of the token's"),
        UNPROCESSABLE,
    ),
)
def list_verdicts(
    auth: Auth,
    store: Store,
    params: Annotated[VerdictFilters, Query()],
    _once: Annotated[None, Depends(_once_each)],
) -> VerdictPage:
    """Newest first by default. Without `tenant` the rows of every tenant of the token."""
    given = params.model_dump()
    # Values first: an empty or NUL `tenant` is a bad value (400) before it is a tenant (403).
    query = build_query(
        {f.name: given[f.name] for f in FILTERS},
        sort=given["sort"],
        limit=given["limit"],
        cursor=given["cursor"],
        tenant_ids=auth.restriction(),
    )
    if query.tenant is not None and not auth.allows(query.tenant):
        raise HTTPException(403, f"this token may not read tenant {shown(query.tenant)}")
    page = store.get().query(query)
    return VerdictPage(
        items=[VerdictItem.from_row(row) for row in page.rows], next_cursor=page.next_cursor
    )


@router.get(
    "/v1/verdicts/{event_id}",
    summary="One verdict with its audit record",
    response_model=VerdictItem,
    responses=responses(UNAUTHORIZED, (404, NOT_FOUND), UNPROCESSABLE),
)
def get_verdict(
    auth: Auth, store: Store, event_id: Annotated[str, Path(description="the upload event id")]
) -> VerdictItem:
    # What no database can compare (a NUL, say) names no stored verdict either. The token's
    # tenants are a condition of the query: another tenant's row is never read, so its 404
    # takes as long as an unknown id's.
    restriction = auth.restriction()
    row = None if text_problem(event_id) else store.get().get(event_id, tenant_ids=restriction)
    if row is None or not auth.allows(row.tenant_id):
        raise HTTPException(404, "no such verdict")
    return VerdictItem.from_row(row)


@router.get(
    "/v1/verdicts/{event_id}/explanation",
    summary="Why a verdict was decided: its decision path (as `moderator explain` prints it)",
    response_model=VerdictExplanation,
    # `policy.row_origin` is left out when not known, as `moderator explain` leaves it out.
    response_model_exclude_unset=True,
    responses=responses(UNAUTHORIZED, (404, NOT_FOUND), UNPROCESSABLE),
)
def explain_verdict(
    auth: Auth,
    store: Store,
    origins: Origins,
    event_id: Annotated[str, Path(description="the upload event id")],
) -> VerdictExplanation:
    """The input, the policy's rule for the category (or its on_error rule), where that row
    was set (while policies.dir still compiles to the verdict's policy version), the engine's
    answer or the error, the rule that decided and the decision. Another tenant's verdict is
    404, as if it did not exist."""
    restriction = auth.restriction()
    reader = ScopedReader(store.get(), restriction)
    found = (
        None if text_problem(event_id) else explain_event(reader, event_id, tenant_ids=restriction)
    )
    if found is None:
        raise HTTPException(404, "no such verdict")
    return VerdictExplanation.model_validate(explanation_json(origins(found)))


@router.get(
    "/v1/policy-versions/{policy_hash}",
    summary="The prompt text and decision table of a policy version",
    response_model=PolicyVersion,
    responses=responses(UNAUTHORIZED, (404, NOT_FOUND), UNPROCESSABLE),
)
def get_policy_version(
    auth: Auth,
    store: Store,
    policy_hash: Annotated[
        str,
        Path(description="64-hex policy hash (or its 16-hex version prefix)"),
    ],
) -> PolicyVersion:
    """Visible only when a verdict of one of the token's tenants was decided under it."""
    key = policy_hash.strip().lower()
    try:
        query = build_query({"policy_version": key}, limit=1, tenant_ids=auth.restriction())
    except InvalidQuery:
        raise HTTPException(404, "no such policy version") from None
    opened = store.get()
    rows = opened.query(query).rows
    full = rows[0].policy_hash if rows else None
    document = opened.policy_version(full) if full else None
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


@router.get("/openapi.json", include_in_schema=False)
def openapi_document(_auth: Auth, request: Request) -> JSONResponse:
    """The OpenAPI description, for a token like every endpoint but /healthz (`create_app`
    turns FastAPI's own, tokenless route off, and its interactive pages)."""
    return JSONResponse(request.app.openapi())


@router.get(
    "/healthz",
    summary="Liveness and database reachability (no token needed)",
    response_model=Health,
    responses=responses(),
)
def healthz(store: Store) -> Health:
    store.get().query(AuditQuery(limit=1))
    return Health()
