"""diff_policies: what changes between two compiled policy sets (pure, no files)."""

from __future__ import annotations

from moderator.policy.check import compile_tenant
from moderator.policy.compiled import TenantPolicy
from moderator.policy.diff import Change, SurfaceDiff, TenantDiff, diff_policies, policy_changes
from tests.policy_fixtures import KEY_PREFIX, directory

Policies = dict[tuple[str, str], TenantPolicy]


def compiled(**tenants: str) -> Policies:
    """Every tenant (the default included) compiled for every surface, as check.py does."""
    files = directory(**tenants)
    out: Policies = {}
    for tenant in files:
        out.update({(tenant, s): p for s, p in compile_tenant(files, tenant, KEY_PREFIX).items()})
    return out


def changes_of(diff: TenantDiff, surface: str = "default") -> list[str]:
    return [str(c) for s in diff.surfaces if s.surface == surface for c in s.changes]


def by_tenant(old: Policies, new: Policies) -> dict[str, TenantDiff]:
    return {d.tenant: d for d in diff_policies(old, new)}


def test_identical_sets_are_unchanged() -> None:
    policies = compiled(shop="categories:\n  O2: {action: review}\n")
    diffs = diff_policies(policies, compiled(shop="categories:\n  O2: {action: review}\n"))
    assert [(d.tenant, d.kind) for d in diffs] == [("default", "unchanged"), ("shop", "unchanged")]
    surface = diffs[1].surfaces[0]
    assert surface.kind == "unchanged" and surface.changes == ()
    assert surface.old_version == surface.new_version == policies[("shop", "default")].version


def test_metadata_only_edits_are_unchanged() -> None:
    old = compiled(shop="description: one\n")
    new = compiled(shop="description: two\nowner: someone\n")
    assert by_tenant(old, new)["shop"].kind == "unchanged"


def test_mode_action_and_thresholds() -> None:
    old = compiled(shop="categories:\n  O2: {action: review, block_at: 0.9}\n")
    new = compiled(shop="categories:\n  O2: {mode: sensitive, review_at: 0.4, block_at: 0.8}\n")
    diff = by_tenant(old, new)["shop"]
    assert diff.kind == "changed"
    assert changes_of(diff) == [
        "O2 mode: default -> sensitive",
        "O2 action: review -> block",
        "O2 block_at: 0.9 -> 0.8",
        "O2 review_at: - -> 0.4",
    ]
    surface = diff.surfaces[0]
    assert surface.kind == "changed" and surface.prompt_changed
    assert surface.old_version == old[("shop", "default")].version
    assert surface.new_version == new[("shop", "default")].version
    assert surface.old_version != surface.new_version


def test_thresholds_alone_leave_the_prompt() -> None:
    old = compiled(shop="none_applying: {action: review}\n")
    new = compiled(shop="none_applying: {action: block, block_at: 0.7}\n")
    surface = by_tenant(old, new)["shop"].surfaces[0]
    assert [str(c) for c in surface.changes] == [
        "NA action: review -> block",
        "NA block_at: - -> 0.7",
    ]
    assert surface.kind == "changed" and not surface.prompt_changed


def test_guideline_texts() -> None:
    old = compiled(shop="{}")
    new = compiled(shop="categories:\n  O3:\n    can: [art]\n  O5: {allowed_text: other}\n")
    # O5 stays in default mode: its allowed text is not in the prompt, so it is no change.
    assert changes_of(by_tenant(old, new)["shop"]) == ["O3 guideline text changed"]
    allowed = compiled(shop="categories:\n  O5: {mode: allowed, allowed_text: other}\n")
    assert changes_of(by_tenant(old, allowed)["shop"]) == [
        "O5 mode: default -> allowed",
        "O5 action: block -> allow",
        "O5 allowed text changed",
    ]
    assert str(Change("O3 guideline text")) == "O3 guideline text changed"


def test_on_error_compares_effective_decisions() -> None:
    old = compiled(shop="on_error: review\n")
    same = compiled(shop="on_error: {default: review, engine_error: review}\n")
    assert by_tenant(old, same)["shop"].kind == "unchanged"
    new = compiled(shop="on_error: {default: block, object_not_found: allow}\n")
    assert changes_of(by_tenant(old, new)["shop"]) == [
        "on_error.default: review -> block",
        "on_error.object_not_found: review -> allow",
    ]


def test_locations() -> None:
    old = compiled(shop="{}")
    new = compiled(shop="allowed: {buckets: [shop-media], prefixes: []}\n")
    assert changes_of(by_tenant(old, new)["shop"]) == [
        "buckets: media, uploads -> shop-media",
        "prefixes: shop/ -> (any key)",
    ]


def test_added_and_removed_tenants() -> None:
    old = compiled(gone="surfaces:\n  avatar:\n    categories:\n      O6: {mode: sensitive}\n")
    new = compiled(fresh="{}")
    diffs = by_tenant(old, new)
    gone, fresh = diffs["gone"], diffs["fresh"]
    assert gone.kind == "removed"
    assert [(s.surface, s.kind, s.new_version) for s in gone.surfaces] == [
        ("default", "removed", None),
        ("avatar", "removed", None),
    ]
    assert gone.surfaces[1].old_version == old[("gone", "avatar")].version
    assert fresh == TenantDiff(
        "fresh",
        "added",
        (SurfaceDiff("default", "added", None, new[("fresh", "default")].version),),
    )


def test_a_new_surface_is_compared_with_the_old_default_surface() -> None:
    old = compiled(shop="{}")
    new = compiled(shop="surfaces:\n  avatar:\n    categories:\n      O6: {mode: sensitive}\n")
    diff = by_tenant(old, new)["shop"]
    assert diff.kind == "changed"
    default, avatar = diff.surfaces
    assert default.kind == "unchanged"
    assert avatar.kind == "surface_added"
    assert avatar.old_version == old[("shop", "default")].version
    assert avatar.new_version == new[("shop", "avatar")].version
    assert [str(c) for c in avatar.changes] == ["O6 mode: default -> sensitive"]
    assert avatar.prompt_changed
    # ... and the other way round: a dropped surface falls back to the new default surface.
    back = by_tenant(new, old)["shop"].surfaces[1]
    assert back.kind == "surface_removed"
    assert [str(c) for c in back.changes] == ["O6 mode: sensitive -> default"]


def test_policy_changes_of_identical_policies_is_empty() -> None:
    policy = compiled()[("default", "default")].resolved
    assert policy_changes(policy, policy) == []
