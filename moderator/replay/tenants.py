"""Tenants a replay would judge without a policy: warned about, once each, before or while it runs.

A replay directory (`--policies DIR`) that lacks a tenant's file turns every event of that tenant
into an `unknown_tenant` error verdict, which the report would then show as changed decisions.
The run goes on (that may be the very change being studied), but the operator is told: before
the run for the tenants known then (`--tenant`, a dry run's census), else at each such tenant's
first event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Set
from typing import TYPE_CHECKING

from moderator.errors import ConfigError, ErrorCode

if TYPE_CHECKING:
    from moderator.policy.base import PolicyProvider
    from moderator.settings import Settings


def gap_warning(tenant: str, directory: str, *, asked: bool = False) -> str:
    """The warning for one tenant without a policy in `directory`: one whose events were seen,
    or (`asked`) one named by `--tenant` before any event is read."""
    known = "is replayed (--tenant) but has" if asked else "has events in the range but"
    return (
        f"tenant {tenant} {known} no policy in {directory}: its verdicts will be "
        f"{ErrorCode.UNKNOWN_TENANT.value} errors"
    )


def tenants_without_policy(tenants: Iterable[str], covered: Set[str]) -> list[str]:
    """The tenants among `tenants` that no policy in `covered` (tenant ids) decides, sorted."""
    return sorted(set(tenants) - covered)


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
    return tenants_without_policy(tenants, {tenant for tenant, _ in found.policies})


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

    def missing(self, tenant: str, *, asked: bool = False) -> None:
        """`tenant` has no policy: warn unless it was warned about already."""
        with self._lock:
            if tenant in self._warned:
                return
            self._warned.add(tenant)
        self._warn(gap_warning(tenant, self._directory, asked=asked))
