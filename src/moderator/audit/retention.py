"""Retention by redaction: a tenant's rows older than its retention lose their record payload
(the AuditRecord JSON, which holds context.user_id and the raw model output) and their
`object_key` (object keys often embed user names or ids). The row and its hashes stay, so the
chain that all tenants' rows share still verifies, and the decision columns (tenant, time,
decision, category, score, policy version, model, error, sha256, bucket) stay for statistics and
transparency reports. What redaction clears is `fields.PERSONAL_COLUMNS` plus `record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from moderator.audit.store import AuditStore

DEFAULT_KEY = "default"


def redact_expired(
    store: AuditStore, policy: Mapping[str, int | None], now: datetime
) -> dict[str, int]:
    """Redact rows decided more than `policy[tenant]` days before `now` (tenants without an
    entry use `policy["default"]`; no entry or None keeps rows forever). Returns the rows
    redacted per tenant (tenants with none are left out)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    for tenant, days in policy.items():
        if days is not None and days < 0:
            raise ValueError(f"retention for {tenant!r} must be >= 0 days, got {days}")
    counts: dict[str, int] = {}
    named = [tenant for tenant in policy if tenant != DEFAULT_KEY]
    for tenant in named:
        days = policy[tenant]
        if days is not None:
            counts.update(store.redact(now - timedelta(days=days), now, tenant_ids=[tenant]))
    default = policy.get(DEFAULT_KEY)
    if default is not None:
        counts.update(store.redact(now - timedelta(days=default), now, exclude=named))
    return counts
