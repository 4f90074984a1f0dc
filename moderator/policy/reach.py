"""Which categories a tenant's policy acts on that an engine can never raise. Pure.

A policy acts on a category when some answer in it can lead to `review` or `block`: its
`action` is not `allow`, or it sets `block_at` or `review_at`. An engine that can never rate an
image Unsafe in that category (nudenet judges O3 and O4 only) never triggers that rule, so the
policy's word on it is silently void. `run`, `demo`, `scan` and `policy validate --engine` say so,
once per tenant (docs/policies.md, "What the engine can raise").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moderator.engine.base import ALL_CODES, Capabilities
from moderator.policy.model import ResolvedCategory, ResolvedPolicy


@dataclass(frozen=True)
class Shortfall:
    """A tenant's policy acts on `categories`, which `engine` can never raise."""

    tenant: str
    engine: str
    categories: tuple[str, ...]  # codes, O1..O9 order
    judged: tuple[str, ...]  # the codes the engine can raise
    reads_policy: bool

    def message(self) -> str:
        """One line, e.g. `engine nudenet can never raise O1, O2, O5-O9 that policy acme acts
        on (it judges O3, O4 only and does not read the policy text); those categories are
        never reviewed or blocked`."""
        judged = f"it judges {format_codes(self.judged)} only" if self.judged else "it judges none"
        if not self.reads_policy:
            judged += " and does not read the policy text"
        return (
            f"engine {self.engine} can never raise {format_codes(self.categories)} that policy "
            f"{self.tenant} acts on ({judged}); those categories are never reviewed or blocked"
        )


def acts_on(category: ResolvedCategory) -> bool:
    """Whether some answer in this category can lead to `review` or `block`."""
    thresholds = category.block_at is not None or category.review_at is not None
    return category.action != "allow" or thresholds


def acted_on(policies: Iterable[ResolvedPolicy]) -> tuple[str, ...]:
    """The codes any of `policies` (a tenant's surfaces) acts on, in O1..O9 order."""
    codes = {c.code for policy in policies for c in policy.categories if acts_on(c)}
    return tuple(code for code in ALL_CODES if code in codes)


def shortfall(
    tenant: str, engine: str, policies: Iterable[ResolvedPolicy], capabilities: Capabilities
) -> Shortfall | None:
    """What `tenant`'s policies (every surface) act on that the engine can never raise; None
    when the engine can raise every such category."""
    missing = tuple(c for c in acted_on(policies) if c not in capabilities.categories)
    if not missing:
        return None
    judged = tuple(c for c in ALL_CODES if c in capabilities.categories)
    return Shortfall(tenant, engine, missing, judged, capabilities.reads_policy)


def shortfalls(
    policies: Iterable[ResolvedPolicy], engine: str, capabilities: Capabilities
) -> list[Shortfall]:
    """One Shortfall per tenant that has one (its surfaces taken together), tenants by name."""
    by_tenant: dict[str, list[ResolvedPolicy]] = {}
    for policy in policies:
        by_tenant.setdefault(policy.tenant_id, []).append(policy)
    found = (shortfall(t, engine, by_tenant[t], capabilities) for t in sorted(by_tenant))
    return [s for s in found if s is not None]


def format_codes(codes: Sequence[str]) -> str:
    """`O1, O2, O5-O9`: codes in taxonomy order; a run of three or more becomes a range."""
    ordered = [c for c in ALL_CODES if c in codes]
    runs: list[list[str]] = []
    for code in ordered:
        if runs and ALL_CODES.index(code) == ALL_CODES.index(runs[-1][-1]) + 1:
            runs[-1].append(code)
        else:
            runs.append([code])
    parts: list[str] = []
    for run in runs:
        parts.extend([f"{run[0]}-{run[-1]}"] if len(run) >= 3 else run)
    return ", ".join(parts)
