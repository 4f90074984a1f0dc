"""Gather what an explanation needs from an audit reader the caller passes in (the audit store).

`explain_event` reads the row of one event id, the compiled policy document it was decided
under (the record's own, else the store's `policy_versions` copy, which retention keeps), and,
for a verdict answered from the verdict cache, the earliest model judgement of the same image
by the same model in the same tenant (the cache is keyed by the image, the model input and the
model, so the original may be under another policy version; another tenant's rows are never
searched). `tenant_ids` restricts every read to those tenants
(the HTTP API's token scope): a row of another tenant is answered as if it did not exist.
No I/O of its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from moderator.audit.models import AuditQuery, AuditRow, Page
from moderator.explain.build import CacheOrigin, explain_row
from moderator.explain.model import Explanation

ORIGIN_PAGES = 10  # pages of 100 rows searched for a cached verdict's original judgement


class AuditReader(Protocol):
    """What explaining reads; `moderator.audit.db.store.AuditStore` has it."""

    def get(self, event_id: str) -> AuditRow | None: ...

    def policy_version(self, policy_hash: str) -> dict[str, Any] | None: ...

    def query(self, q: AuditQuery) -> Page: ...


def explain_event(
    reader: AuditReader, event_id: str, *, tenant_ids: tuple[str, ...] | None = None
) -> Explanation | None:
    """The explanation of `event_id`, or None when no row of the allowed tenants has it."""
    row = reader.get(event_id)
    if row is None or (tenant_ids is not None and row.tenant_id not in tenant_ids):
        return None
    document = policy_document(reader, row)
    if row.source != "cache":
        return explain_row(row, document)
    origin = cache_origin(reader, row, tenant_ids)
    return explain_row(row, document, cache_origin=origin, origin_looked_up=True)


def policy_document(reader: AuditReader, row: AuditRow) -> dict[str, Any] | None:
    """The compiled policy document of the row: the record's, else the kept policy version."""
    found = (row.record or {}).get("policy_document")
    if isinstance(found, dict):
        return found
    return reader.policy_version(row.policy_hash) if row.policy_hash else None


def cache_origin(
    reader: AuditReader, row: AuditRow, tenant_ids: tuple[str, ...] | None
) -> CacheOrigin | None:
    """The earliest row of the same tenant decided before `row` by the model (not the cache,
    not an error) for the same sha256 and model: where the cached assessment most likely came
    from."""
    if not (row.sha256 and row.model_engine):
        return None
    model = row.model_engine + (f":{row.model_name}" if row.model_name else "")
    query = AuditQuery(
        sha256=row.sha256,
        model=model,
        until=row.decided_at,
        sort="decided_at",
        limit=100,
        tenant_ids=(row.tenant_id,),
    )
    for _ in range(ORIGIN_PAGES):
        page = reader.query(query)
        for found in page.rows:
            if found.source == "model" and found.error_code is None:
                return CacheOrigin(event_id=found.event_id, decided_at=found.decided_at)
        if page.next_cursor is None:
            return None
        query = replace(query, cursor=page.next_cursor)
    return None
