"""Retention by redaction: a tenant's rows older than its retention lose their record payload
(the AuditRecord JSON, which holds context.user_id and the raw model output) and their
`object_key` (object keys often embed user names or ids). The row and its hashes stay, so the
chain that all tenants' rows share still verifies, and the decision columns (tenant, time,
decision, category, score, policy version, model, error, sha256, bucket) stay for statistics and
transparency reports. What redaction clears is `fields.PERSONAL_COLUMNS` plus `record`; what it
keeps is covered by each row's columns_hash (`canonical.KEPT_COLUMNS`), so `verify` still checks
a redacted row's columns, and holds it to having nothing left of what redaction clears.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from moderator.audit.db.store import AuditStore
from moderator.errors import ConfigError
from moderator.settings import MAX_RETENTION_DAYS

DEFAULT_KEY = "default"


def cutoff(now: datetime, tenant: str, days: int) -> datetime:
    """`now` minus `days`: rows decided before it are expired. Raises ConfigError naming the
    setting when `days` is outside 0..MAX_RETENTION_DAYS (a huge value would overflow)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(
            f"audit.retention_days[{tenant!r}]: must be 0..{MAX_RETENTION_DAYS} days, got "
            f"{days!r} (leave the tenant out to keep its records forever)"
        )
    return now - timedelta(days=days)


def redact_expired(
    store: AuditStore,
    policy: Mapping[str, int | None],
    now: datetime,
    done: Callable[[str, int, int, int], None] | None = None,
) -> dict[str, int]:
    """Redact rows decided more than `policy[tenant]` days before `now` (tenants without an
    entry use `policy["default"]`; no entry or None keeps rows forever). Returns the rows
    redacted per tenant (tenants with none are left out). A number of days outside
    0..MAX_RETENTION_DAYS raises ConfigError before anything is redacted. `done` is told after
    each step: the entry (a tenant, or "default"), rows redacted so far, the step's number and
    the steps in all."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoffs = {
        tenant: cutoff(now, tenant, days) for tenant, days in policy.items() if days is not None
    }
    counts: dict[str, int] = {}
    named = [tenant for tenant in policy if tenant != DEFAULT_KEY]
    steps = [tenant for tenant in named if tenant in cutoffs]
    steps += [DEFAULT_KEY] if DEFAULT_KEY in cutoffs else []
    for number, entry in enumerate(steps, 1):
        if entry == DEFAULT_KEY:
            counts.update(store.redact(cutoffs[DEFAULT_KEY], now, exclude=named))
        else:
            counts.update(store.redact(cutoffs[entry], now, tenant_ids=[entry]))
        if done is not None:
            done(entry, sum(counts.values()), number, len(steps))
    return counts
