"""Each tenant's policies are compiled once per process for the same files and settings: a
directory check before start-up and the registry built after it share them, a reload recompiles
only the tenants whose files changed, and what cannot be told apart by equality is still."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.policy.check import check, compile_tenant
from moderator.policy.compiled import TenantPolicy, compile_policy
from moderator.policy.load import PolicyError
from moderator.policy.memo import CompileMemo
from moderator.policy.registry import PolicyRegistry
from moderator.policy.resolve import resolve
from tests.policy_fixtures import (
    BUCKET_MAP,
    KEY_PREFIX,
    count_compiles,
    default_yaml,
    directory,
    write_sample_policies,
)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_sample_policies(tmp_path)


def test_a_checked_directory_is_not_compiled_again_to_serve_it(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = count_compiles(monkeypatch)
    result = check(policy_dir, KEY_PREFIX)
    registry = PolicyRegistry(policy_dir, KEY_PREFIX)
    assert sorted(compiled) == sorted(result.policies)  # each (tenant, surface) once
    assert all(registry.resolve(t, s) is p for (t, s), p in result.policies.items())
    check(policy_dir, KEY_PREFIX)  # a second check, as a replay's report makes
    assert len(compiled) == len(result.policies)


def test_an_edit_recompiles_only_the_tenants_that_read_the_file(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = count_compiles(monkeypatch)
    registry = PolicyRegistry(policy_dir, KEY_PREFIX)
    compiled.clear()
    registry.reload()
    assert compiled == []
    (policy_dir / "kids.yaml").write_text("on_error: review\n")
    assert registry.reload()
    assert compiled == [("kids", "default")]
    (policy_dir / "default.yaml").write_text(default_yaml().replace("owner: tests", "owner: x"))
    registry.reload()
    assert not registry.errors
    assert len(compiled) == 1 + 4  # every chain ends in default.yaml: all tenants again


def test_a_key_written_as_null_is_not_a_key_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two files compare equal (pydantic compares values only), yet `null` clears the
    inherited threshold: the memo must not hand one's policy out for the other."""
    base = "categories: {O2: {block_at: 0.9}}\n"
    cleared = directory(base=base, kids="extends: base\ncategories: {O2: {block_at: null}}\n")
    kept = directory(base=base, kids="extends: base\ncategories: {O2: {}}\n")
    assert cleared["kids"] == kept["kids"]
    compiled = count_compiles(monkeypatch)
    first = compile_tenant(cleared, "kids", KEY_PREFIX)["default"]
    second = compile_tenant(kept, "kids", KEY_PREFIX)["default"]
    assert first.resolved.category("O2").block_at is None
    assert second.resolved.category("O2").block_at == 0.9
    assert len(compiled) == 2


def test_the_tenancy_settings_are_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    files = directory(acme="on_error: block\n")
    compiled = count_compiles(monkeypatch)
    by_prefix = compile_tenant(files, "acme", KEY_PREFIX)["default"]
    by_bucket = compile_tenant(files, "acme", BUCKET_MAP)["default"]
    assert by_prefix.resolved.prefixes == ("acme/",) and by_bucket.resolved.prefixes == ()
    assert by_bucket.resolved.buckets == ("acme-a", "acme-b")
    assert len(compiled) == 2


@pytest.mark.parametrize(
    "text",
    [
        "extends: nowhere\n",  # no chain to key on
        "extends: base\ncategories: {O2: {review_at: 0.95}}\n",  # above base's block_at
    ],
)
def test_a_compile_that_fails_is_not_remembered(text: str) -> None:
    memo = CompileMemo()
    files = directory(base="categories: {O2: {block_at: 0.9}}\n", kids=text)
    tries: list[str] = []

    def build() -> dict[str, TenantPolicy]:
        tries.append("kids")
        return {"default": compile_policy(resolve(files, "kids", "default", KEY_PREFIX))}

    for _ in range(2):
        with pytest.raises(PolicyError):
            memo.compiled(files, "kids", KEY_PREFIX, build)
    assert tries == ["kids", "kids"]


def test_the_least_recently_used_tenant_goes_first() -> None:
    memo = CompileMemo(size=2)
    files = directory(a="on_error: block\n", b="on_error: block\n", c="on_error: block\n")
    calls: list[str] = []

    def compiled(tenant: str) -> None:
        def build() -> dict[str, TenantPolicy]:
            calls.append(tenant)
            return {}

        memo.compiled(files, tenant, KEY_PREFIX, build)

    for tenant in ("a", "b", "a", "c", "a", "b"):
        compiled(tenant)
    assert calls == ["a", "b", "c", "b"]  # c pushed b out, a was used more recently
