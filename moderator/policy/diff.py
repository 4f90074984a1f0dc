"""What changes between two sets of compiled policies, tenant by tenant and surface by surface.

Pure: the inputs are {(tenant, surface): TenantPolicy} maps (see check.py), the output plain
dataclasses that `moderator policy diff` formats. A surface one side declares and the other does
not is compared with the other side's default surface, since that is what events naming the
surface get there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from moderator.policy.compiled import TenantPolicy
from moderator.policy.model import ResolvedCategory, ResolvedPolicy

SURFACE_DEFAULT = "default"

TenantKind = Literal["added", "removed", "changed", "unchanged"]
SurfaceKind = Literal[
    "added", "removed", "changed", "unchanged", "surface_added", "surface_removed"
]


@dataclass(frozen=True)
class Change:
    """One difference: `field: old -> new`, or `field changed` for texts (old and new None)."""

    field: str
    old: str | None = None
    new: str | None = None

    def __str__(self) -> str:
        if self.old is None and self.new is None:
            return f"{self.field} changed"
        return f"{self.field}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class SurfaceDiff:
    surface: str
    kind: SurfaceKind
    old_version: str | None
    new_version: str | None
    changes: tuple[Change, ...] = ()
    prompt_changed: bool = False


@dataclass(frozen=True)
class TenantDiff:
    tenant: str
    kind: TenantKind
    surfaces: tuple[SurfaceDiff, ...]  # the default surface first, then by name


def diff_policies(
    old: Mapping[tuple[str, str], TenantPolicy], new: Mapping[tuple[str, str], TenantPolicy]
) -> list[TenantDiff]:
    """One entry per tenant present on either side, sorted by tenant id."""
    tenants = sorted({t for t, _ in old} | {t for t, _ in new})
    return [_tenant(tenant, _surfaces(old, tenant), _surfaces(new, tenant)) for tenant in tenants]


def _surfaces(
    policies: Mapping[tuple[str, str], TenantPolicy], tenant: str
) -> dict[str, TenantPolicy]:
    return {s: p for (t, s), p in policies.items() if t == tenant}


def _tenant(tenant: str, old: dict[str, TenantPolicy], new: dict[str, TenantPolicy]) -> TenantDiff:
    names = sorted(set(old) | set(new), key=lambda s: (s != SURFACE_DEFAULT, s))
    if not old:
        return TenantDiff(tenant, "added", tuple(_one_side("added", s, new[s]) for s in names))
    if not new:
        return TenantDiff(tenant, "removed", tuple(_one_side("removed", s, old[s]) for s in names))
    diffs = tuple(_surface(s, old, new) for s in names)
    kind: TenantKind = "unchanged" if all(d.kind == "unchanged" for d in diffs) else "changed"
    return TenantDiff(tenant, kind, diffs)


def _one_side(kind: SurfaceKind, surface: str, policy: TenantPolicy) -> SurfaceDiff:
    version = policy.version
    if kind == "added":
        return SurfaceDiff(surface, kind, None, version)
    return SurfaceDiff(surface, kind, version, None)


def _surface(
    surface: str, old: dict[str, TenantPolicy], new: dict[str, TenantPolicy]
) -> SurfaceDiff:
    kind: SurfaceKind = "changed"
    if surface not in old:
        kind = "surface_added"
    elif surface not in new:
        kind = "surface_removed"
    before = old.get(surface, old.get(SURFACE_DEFAULT))
    after = new.get(surface, new.get(SURFACE_DEFAULT))
    if before is None or after is None:  # a tenant always compiles its default surface
        raise ValueError(f"no default surface to compare {surface!r} with")
    if kind == "changed" and before.version == after.version:
        kind = "unchanged"
    return SurfaceDiff(
        surface,
        kind,
        before.version,
        after.version,
        tuple(policy_changes(before.resolved, after.resolved)),
        before.prompt != after.prompt,
    )


def policy_changes(old: ResolvedPolicy, new: ResolvedPolicy) -> list[Change]:
    """Every difference that can change the prompt or a decision, in a fixed order."""
    changes: list[Change] = []
    for before, after in zip(old.categories, new.categories, strict=True):
        changes.extend(_category(before, after))
    na_old, na_new = old.none_applying, new.none_applying
    changes.extend(
        _field("NA action", na_old.action, na_new.action)
        + _field("NA block_at", _number(na_old.block_at), _number(na_new.block_at))
        + _field("NA review_at", _number(na_old.review_at), _number(na_new.review_at))
    )
    for code in sorted(set(old.on_error) | set(new.on_error), key=lambda c: (c != "default", c)):
        changes.extend(
            _field(f"on_error.{code}", _on_error(old, code), _on_error(new, code)),
        )
    changes.extend(
        _field("buckets", _listing(old.buckets), _listing(new.buckets))
        + _field("prefixes", _prefixes(old.prefixes), _prefixes(new.prefixes))
    )
    return changes


def _category(old: ResolvedCategory, new: ResolvedCategory) -> list[Change]:
    code = old.code
    changes = (
        _field(f"{code} mode", old.mode, new.mode)
        + _field(f"{code} action", old.action, new.action)
        + _field(f"{code} block_at", _number(old.block_at), _number(new.block_at))
        + _field(f"{code} review_at", _number(old.review_at), _number(new.review_at))
    )
    modes = {old.mode, new.mode}
    # Only the texts of the states in use reach the prompt; the others are inert.
    if "default" in modes and (old.should_not, old.can) != (new.should_not, new.can):
        changes.append(Change(f"{code} guideline text"))
    if "allowed" in modes and old.allowed_text != new.allowed_text:
        changes.append(Change(f"{code} allowed text"))
    if "sensitive" in modes and old.sensitive_text != new.sensitive_text:
        changes.append(Change(f"{code} sensitive text"))
    return changes


def _field(name: str, old: str, new: str) -> list[Change]:
    return [] if old == new else [Change(name, old, new)]


def _on_error(policy: ResolvedPolicy, code: str) -> str:
    return policy.on_error.get(code, policy.on_error.get("default", "review"))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _listing(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "(none)"


def _prefixes(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "(any key)"
