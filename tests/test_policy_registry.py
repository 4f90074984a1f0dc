"""The policy registry: load, compile, hot reload, last good version on a broken edit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import Assessment
from moderator.logs import configure_logging
from moderator.policy.registry import PolicyRegistry
from moderator.settings import LogSettings, TenancySettings
from tests.policy_fixtures import write_sample_policies

TENANCY = TenancySettings(upload_buckets=("uploads",))
UNSAFE_O4 = Assessment(rating="Unsafe", category="O4: Nudity Content", score=0.7)


def write(path: Path, text: str) -> None:
    """Replace a file atomically, as an editor or a config-management tool does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_sample_policies(tmp_path)


def test_loads_every_tenant_and_surface(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    assert registry.tenants() == ("acme", "default", "kids")
    acme = registry.resolve("acme", "default")
    photo = registry.resolve("acme", "profile_photo")
    other = registry.resolve("acme", "timeline")  # no override declared: default rules
    assert acme is not None and photo is not None and other is not None
    assert acme.decide(UNSAFE_O4) == "allow"  # allowed state: its default action is allow
    assert photo.decide(UNSAFE_O4) == "block"  # sensitive with block_at 0.5
    assert photo.version != acme.version
    assert other.version == acme.version and other.surface == "timeline"
    assert registry.status()["acme"].versions == {
        "default": acme.version,
        "profile_photo": photo.version,
    }
    assert not registry.errors and not registry.stale


def test_unknown_tenants_and_the_fallback(policy_dir: Path) -> None:
    closed = PolicyRegistry(policy_dir, TENANCY)
    assert closed.resolve("nobody", "default") is None
    fallback = closed.fallback("nobody", "post")
    assert fallback.on_error(ErrorCode.UNKNOWN_TENANT) == "review"
    opened = PolicyRegistry(policy_dir, TENANCY, default_for_unknown=True)
    nobody = opened.resolve("nobody", "post")
    assert nobody is not None and nobody.tenant_id == "nobody"
    assert nobody.allows_object("uploads", "nobody/a.jpg")
    assert not nobody.allows_object("uploads", "acme/a.jpg")
    assert opened.resolve("nobody", "post") is not None  # cached the second time


def test_tenant_isolation_follows_the_tenancy_rule(policy_dir: Path) -> None:
    by_prefix = PolicyRegistry(policy_dir, TENANCY).resolve("kids", "default")
    assert by_prefix is not None
    assert by_prefix.allows_object("uploads", "kids/x.png")
    assert not by_prefix.allows_object("uploads", "acme/x.png")
    assert not by_prefix.allows_object("other", "kids/x.png")
    assert not by_prefix.allows_object("uploads", "kids/../acme/x.png")
    mapped = TenancySettings(rule="bucket_map", bucket_map={"kids-media": "kids"})
    by_bucket = PolicyRegistry(policy_dir, mapped).resolve("kids", "default")
    assert by_bucket is not None
    assert by_bucket.allows_object("kids-media", "any/key.png")
    assert not by_bucket.allows_object("uploads", "kids/x.png")


def test_start_up_fails_on_the_first_bad_file(policy_dir: Path) -> None:
    (policy_dir / "zeta.yaml").write_text("categories:\n  O3:\n    block_at: 2\n")
    with pytest.raises(ConfigError, match=r"zeta\.yaml:3: categories\.O3\.block_at"):
        PolicyRegistry(policy_dir, TENANCY)
    with pytest.raises(ConfigError, match="not a directory"):
        PolicyRegistry(policy_dir / "missing", TENANCY)
    (policy_dir / "alpha.yaml").write_text("owner: 3\nschema: 2\n")
    with pytest.raises(ConfigError) as caught:
        PolicyRegistry(policy_dir, TENANCY)
    assert str(caught.value) == (
        f"{policy_dir}/alpha.yaml:1: owner: must be a string, not the number 3 (quote it to make "
        f"it a string) (and 2 more problems); run `moderator policy validate {policy_dir}` to "
        "see every problem"
    )


@pytest.fixture
def info_logs() -> Iterator[None]:
    """Let info events through for capture_logs (the test session logs at warning)."""
    configure_logging(LogSettings(level="info", format="json"))
    yield
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.mark.usefixtures("info_logs")
def test_reload_swaps_in_a_change(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    before = registry.resolve("kids", "default")
    assert before is not None and before.on_error(ErrorCode.CORRUPT_IMAGE) == "block"
    assert registry.reload() is False  # nothing changed on disk
    assert registry.resolve("kids", "default") is before  # not even compiled again
    write(policy_dir / "kids.yaml", "on_error: review\n")
    with capture_logs() as logs:
        assert registry.reload() is True
    after = registry.resolve("kids", "default")
    assert after is not None and after.on_error(ErrorCode.CORRUPT_IMAGE) == "review"
    assert after.version != before.version
    changed = [e for e in logs if e["event"] == "policy_changed"]
    assert changed == [
        {
            "event": "policy_changed",
            "log_level": "info",
            "tenant": "kids",
            "surface": "default",
            "old": before.version,
            "new": after.version,
        }
    ]


def test_a_broken_edit_keeps_the_last_good_version(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    good = registry.resolve("kids", "default")
    assert good is not None
    write(policy_dir / "kids.yaml", "on_error: block\ncategories:\n  O4: {mode: sometimes}\n")
    with capture_logs() as logs:
        assert registry.reload() is False
    kept = registry.resolve("kids", "default")
    assert kept is not None and kept.version == good.version
    assert len(registry.errors) == 1
    assert registry.errors[0].startswith(f"{policy_dir / 'kids.yaml'}:3: categories.O4.mode")
    status = registry.status()["kids"]
    assert status.stale and status.error == registry.errors[0]
    assert not registry.status()["acme"].stale
    assert [e["error"] for e in logs if e["event"] == "policy_invalid"] == list(registry.errors)
    with capture_logs() as again:
        registry.reload()  # the same error is not logged twice
    assert not [e for e in again if e["event"] == "policy_invalid"]
    write(policy_dir / "kids.yaml", "on_error: review\n")
    assert registry.reload() is True
    assert not registry.errors and not registry.status()["kids"].stale


def test_a_broken_default_keeps_every_tenant(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    versions = {t: s.versions for t, s in registry.status().items()}
    write(policy_dir / "default.yaml", "categories: [1, 2]\n")
    registry.reload()
    assert {t: s.versions for t, s in registry.status().items()} == versions
    assert registry.errors and "default.yaml:1" in registry.errors[0]


def test_a_tenant_that_no_longer_resolves_keeps_its_policies(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    good = registry.resolve("kids", "default")
    write(policy_dir / "kids.yaml", "extends: nowhere\n")  # valid file, unknown base
    registry.reload()
    kept = registry.resolve("kids", "default")
    assert kept is not None and good is not None and kept.version == good.version
    assert registry.status()["kids"].stale
    assert any("unknown base policy 'nowhere'" in e for e in registry.errors)


def test_added_and_removed_tenants(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    write(policy_dir / "news.yaml", "on_error: review\n")
    (policy_dir / "kids.yaml").unlink()
    registry.reload()
    assert registry.resolve("news", "default") is not None
    assert registry.resolve("kids", "default") is None
    assert "kids" not in registry.status()


def test_the_poller_picks_up_changes(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY, poll_interval_s=0.05)
    registry.start()
    try:
        before = registry.resolve("kids", "default")
        write(policy_dir / "kids.yaml", "on_error: review\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = registry.resolve("kids", "default")
            if now is not None and before is not None and now.version != before.version:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the poller did not reload the changed file")
    finally:
        registry.close()


def test_a_new_file_that_fails_is_a_stale_tenant_with_nothing_in_force(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    write(policy_dir / "newbie.yaml", "categories:\n  O4: {mode: sometimes}\n")
    with capture_logs() as logs:
        assert registry.reload() is False
    status = registry.status()["newbie"]
    assert status.stale and status.versions == {} and status.error == registry.errors[0]
    assert registry.resolve("newbie", "default") is None  # its events get unknown_tenant
    invalid = [e for e in logs if e["event"] == "policy_invalid"]
    assert [(e["tenant"], e["last_good_in_force"]) for e in invalid] == [("newbie", False)]
    write(policy_dir / "kids.yaml", "on_error: [nope\n")
    with capture_logs() as logs:
        registry.reload()
    invalid = [e for e in logs if e["event"] == "policy_invalid"]
    assert [(e["tenant"], e["last_good_in_force"]) for e in invalid] == [("kids", True)]
    write(policy_dir / "newbie.yaml", "on_error: block\n")
    registry.reload()
    assert registry.status()["newbie"].versions and not registry.status()["newbie"].stale


def test_readiness_names_stale_tenants_and_tenants_with_nothing_in_force(policy_dir: Path) -> None:
    from moderator.service import _policies_check

    registry = PolicyRegistry(policy_dir, TENANCY)
    check = _policies_check(registry)
    assert check().ok and check().detail == "3 tenants loaded"
    write(policy_dir / "kids.yaml", "on_error: [nope\n")
    write(policy_dir / "newbie.yaml", "on_error: [nope\n")
    registry.reload()
    assert check().ok
    assert check().detail == (
        "3 tenants loaded; stale (last good version in force): kids; "
        "not loaded (its file fails, no version in force): newbie"
    )
