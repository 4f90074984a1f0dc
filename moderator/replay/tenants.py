"""Tenants a replay would judge without a policy: warned about, once each, before or while it runs.

A replay directory (`--policies DIR`) that lacks a tenant's file turns every event of that tenant
into an `unknown_tenant` error verdict, which the report would then show as changed decisions.
The run goes on (that may be the very change being studied), but the operator is told at each
such tenant's first event, through the run's own policies (a dry run, which builds none, reads
the directory for the tenants it counted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from moderator.errors import ConfigError, ErrorCode

if TYPE_CHECKING:
    from moderator.policy.base import PolicyProvider
    from moderator.settings import Settings


def gap_warning(tenant: str, directory: str) -> str:
    """The warning for one tenant with events but without a policy in `directory`."""
    return (
        f"tenant {tenant} has events in the range but no policy in {directory}: its verdicts "
        f"will be {ErrorCode.UNKNOWN_TENANT.value} errors"
    )


def uncovered(settings: Settings, tenants: Iterable[str]) -> list[str]:
    """The tenants among `tenants` that no policy in `settings.policies.dir` decides, sorted;
    [] when the directory cannot be read (a dry run does not check it; a run has checked it)."""
    from moderator.policy.check import check

    if settings.policies.default_for_unknown:
        return []
    try:
        found = check(settings.policies.dir, settings.tenancy)
    except ConfigError:
        return []
    return sorted(set(tenants) - {tenant for tenant, _ in found.policies})


def tenant_check(
    policies: PolicyProvider, on_missing: Callable[[str], None] | None
) -> Callable[[str, str], None] | None:
    """A check of each kept event's (tenant, surface) that calls `on_missing(tenant)` when no
    policy decides it, as the pipeline finds out (None without `on_missing`)."""
    if on_missing is None:
        return None
    report = on_missing

    def check_tenant(tenant: str, surface: str) -> None:
        if policies.resolve(tenant, surface) is None:
            report(tenant)

    return check_tenant


class PolicyGaps:
    """Warns once per tenant (thread-safe); `warn` gets the line without a prefix."""

    def __init__(self, directory: str, warn: Callable[[str], None]) -> None:
        self._directory = directory
        self._warn = warn
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def missing(self, tenant: str) -> None:
        """`tenant` has no policy: warn unless it was warned about already."""
        with self._lock:
            if tenant in self._warned:
                return
            self._warned.add(tenant)
        self._warn(gap_warning(tenant, self._directory))


def absent_tenants(
    named: Iterable[str], kept: Iterable[str], in_range: Iterable[str] = ()
) -> list[str]:
    """One warning per `--tenant` none of whose events the run keeps (a typo reads as "nothing
    would change" otherwise), naming the tenants the range holds (`in_range`, else `kept`) when
    they are few."""
    kept_set = set(kept)
    present = sorted(set(in_range) | kept_set)
    found = f"; tenants in the range: {', '.join(present)}" if 0 < len(present) <= 10 else ""
    return [
        f"--tenant {tenant}: no event of this tenant to replay in the range{found}"
        for tenant in sorted(set(named) - kept_set)
    ]
