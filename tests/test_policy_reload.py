"""Hot reload of broken files: an empty file, a broken base, and what is logged and published
while the last good policies stay in force and when they are replaced again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from moderator.errors import ConfigError, ErrorCode
from moderator.logs import configure_logging
from moderator.obs.metrics import Metrics
from moderator.policy.load import EMPTY_FILE
from moderator.policy.registry import PolicyRegistry
from moderator.settings import LogSettings, TenancySettings
from tests.policy_fixtures import write_sample_policies

TENANCY = TenancySettings(upload_buckets=("uploads",))


class Gauges(Metrics):
    """Metrics that remember the last value of every gauge."""

    def __init__(self) -> None:
        super().__init__(None)
        self.values: dict[tuple[str, str], float] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        super().set(name, value, **labels)
        self.values[(name, labels["tenant"])] = value

    def stale(self) -> list[str]:
        return sorted(t for (n, t), v in self.values.items() if n == "moderator_policy_stale" and v)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_sample_policies(tmp_path)


@pytest.fixture(autouse=True)
def info_logs() -> Iterator[None]:
    """Let info events through for capture_logs (the test session logs at warning)."""
    configure_logging(LogSettings(level="info", format="json"))
    yield
    configure_logging(LogSettings(level="warning", format="json"))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def version(registry: PolicyRegistry, tenant: str) -> str | None:
    policy = registry.resolve(tenant, "default")
    return policy.version if policy is not None else None


def readiness(registry: PolicyRegistry) -> str:
    from moderator.service import _policies_check

    return _policies_check(registry)().detail


# -- an empty file -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# kids: see the wiki\n", "~\n"])
def test_a_truncated_file_is_a_broken_edit_not_the_default_policy(
    policy_dir: Path, text: str
) -> None:
    gauges = Gauges()
    registry = PolicyRegistry(policy_dir, TENANCY, metrics=gauges)
    good = version(registry, "kids")
    (policy_dir / "kids.yaml").write_text(text)  # `> kids.yaml`: truncated in place
    with capture_logs() as logs:
        assert registry.reload() is False
    assert version(registry, "kids") == good
    kids = registry.resolve("kids", "default")
    assert kids is not None and kids.on_error(ErrorCode.CORRUPT_IMAGE) == "block"  # still its own
    assert len(registry.errors) == 1 and registry.errors[0].startswith(
        str(policy_dir / "kids.yaml")
    )
    assert registry.errors[0].endswith(EMPTY_FILE.split(": ", 1)[1])
    assert not events(logs, "policy_changed")
    [invalid] = events(logs, "policy_invalid")
    assert (invalid["tenant"], invalid["in_force"], invalid["error"]) == (
        "kids",
        good,
        registry.errors[0],
    )
    assert registry.status()["kids"].stale and gauges.stale() == ["kids"]
    assert readiness(registry).endswith("stale (last good version in force): kids")


def test_an_empty_default_is_refused_at_start_up_and_kept_on_reload(policy_dir: Path) -> None:
    default = policy_dir / "default.yaml"
    text = default.read_text()
    default.write_text("")
    with pytest.raises(ConfigError) as caught:
        PolicyRegistry(policy_dir, TENANCY)
    assert str(caught.value) == f"{default}: {EMPTY_FILE}"
    default.write_text(text)
    registry = PolicyRegistry(policy_dir, TENANCY)
    versions = {t: s.versions for t, s in registry.status().items()}
    default.write_text("")
    registry.reload()
    assert registry.errors == (f"{default}: {EMPTY_FILE}",)
    assert {t: s.versions for t, s in registry.status().items()} == versions


def test_an_empty_mapping_is_a_tenant_that_inherits_everything(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    (policy_dir / "kids.yaml").write_text("{}\n")
    assert registry.reload() is True
    assert not registry.errors
    kids = registry.resolve("kids", "default")
    assert kids is not None and kids.on_error(ErrorCode.CORRUPT_IMAGE) == "review"  # inherited


# -- fixed again ---------------------------------------------------------------------------------


def test_a_fixed_file_is_logged_with_the_version_now_in_force(policy_dir: Path) -> None:
    gauges = Gauges()
    registry = PolicyRegistry(policy_dir, TENANCY, metrics=gauges)
    (policy_dir / "kids.yaml").write_text("on_error: [nope\n")
    registry.reload()
    (policy_dir / "kids.yaml").write_text("on_error: review\n")
    with capture_logs() as logs:
        assert registry.reload() is True
    now = version(registry, "kids")
    assert [(e["tenant"], e["in_force"]) for e in events(logs, "policy_valid_again")] == [
        ("kids", now)
    ]
    assert events(logs, "policy_valid_again")[0]["log_level"] == "info"
    assert gauges.stale() == [] and not registry.errors
    with capture_logs() as again:
        registry.reload()
    assert not events(again, "policy_valid_again")  # once, not at every poll


def test_a_broken_new_file_removed_is_logged_too(policy_dir: Path) -> None:
    gauges = Gauges()
    registry = PolicyRegistry(policy_dir, TENANCY, metrics=gauges)
    (policy_dir / "newbie.yaml").write_text("")
    with capture_logs() as logs:
        registry.reload()
    [invalid] = events(logs, "policy_invalid")
    assert (invalid["tenant"], invalid["in_force"], invalid["last_good_in_force"]) == (
        "newbie",
        None,
        False,
    )
    assert gauges.stale() == ["newbie"]
    (policy_dir / "newbie.yaml").unlink()
    with capture_logs() as logs:
        registry.reload()
    assert [(e["tenant"], e["in_force"]) for e in events(logs, "policy_valid_again")] == [
        ("newbie", None)
    ]
    assert gauges.stale() == [] and "newbie" not in registry.status()


def test_an_unknown_tenant_verdict_says_when_the_tenant_has_a_file_that_does_not_load(
    policy_dir: Path,
) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    assert registry.unknown_reason("loopa") == "no policy for tenant 'loopa'"
    (policy_dir / "loopa.yaml").write_text("extends: loopa\n")
    registry.reload()
    assert registry.resolve("loopa", "default") is None
    assert registry.unknown_reason("loopa") == (
        "no policy for tenant 'loopa': its policy file does not load "
        f"({policy_dir / 'loopa.yaml'}: extends: inheritance cycle loopa -> loopa)"
    )


# -- a broken file in a tenant's chain -----------------------------------------------------------


def test_a_broken_default_holds_back_every_tenant(policy_dir: Path) -> None:
    gauges = Gauges()
    registry = PolicyRegistry(policy_dir, TENANCY, metrics=gauges)
    before = {t: version(registry, t) for t in registry.tenants()}
    (policy_dir / "default.yaml").write_text("categories: [1, 2]\n")
    with capture_logs() as logs:
        registry.reload()
    [error] = registry.errors
    assert {t: (s.stale, s.error) for t, s in registry.status().items()} == {
        t: (True, error) for t in ("acme", "default", "kids")
    }
    assert gauges.stale() == ["acme", "default", "kids"]
    assert readiness(registry).endswith("stale (last good version in force): acme, default, kids")
    [invalid] = events(logs, "policy_invalid")
    assert (invalid["tenant"], invalid["in_force"], invalid["also_stale"]) == (
        "default",
        before["default"],
        ["acme", "kids"],
    )
    assert {t: version(registry, t) for t in registry.tenants()} == before


def test_an_edit_waits_until_its_whole_chain_loads(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    good = version(registry, "kids")
    default = policy_dir / "default.yaml"
    text = default.read_text()
    default.write_text("categories: [1, 2]\n")
    registry.reload()
    (policy_dir / "kids.yaml").write_text("on_error: review\n")  # valid on its own
    with capture_logs() as logs:
        assert registry.reload() is False
    assert version(registry, "kids") == good  # not compiled over the last good default
    kids = registry.resolve("kids", "default")
    assert kids is not None and kids.on_error(ErrorCode.CORRUPT_IMAGE) == "block"
    [held] = events(logs, "policy_held_back")
    assert (held["tenant"], held["by"], held["in_force"]) == ("kids", registry.errors[0], good)
    assert not events(logs, "policy_changed") and not events(logs, "policy_invalid")
    default.write_text(text)
    with capture_logs() as logs:
        assert registry.reload() is True
    kids = registry.resolve("kids", "default")
    assert kids is not None and kids.on_error(ErrorCode.CORRUPT_IMAGE) == "review"
    assert [e["tenant"] for e in events(logs, "policy_changed")] == ["kids"]
    again = {e["tenant"]: e["in_force"] for e in events(logs, "policy_valid_again")}
    assert again == {t: version(registry, t) for t in ("acme", "default", "kids")}
    assert not registry.errors and not any(s.stale for s in registry.status().values())


def test_a_broken_base_holds_back_only_the_tenants_that_extend_it(policy_dir: Path) -> None:
    (policy_dir / "family.yaml").write_text("on_error: review\n")
    (policy_dir / "kids.yaml").write_text("extends: family\non_error: block\n")
    gauges = Gauges()
    registry = PolicyRegistry(policy_dir, TENANCY, metrics=gauges)
    good = version(registry, "kids")
    (policy_dir / "family.yaml").write_text("on_error: [nope\n")
    (policy_dir / "kids.yaml").write_text("extends: family\non_error: review\n")
    registry.reload()
    assert version(registry, "kids") == good
    assert gauges.stale() == ["family", "kids"]
    assert registry.status()["kids"].error == registry.errors[0]
    assert not registry.status()["acme"].stale


def test_a_new_tenant_over_a_broken_default_waits_with_nothing_in_force(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    (policy_dir / "default.yaml").write_text("")
    (policy_dir / "news.yaml").write_text("on_error: review\n")
    with capture_logs() as logs:
        registry.reload()
    assert registry.resolve("news", "default") is None
    status = registry.status()["news"]
    assert status.stale and status.versions == {}
    assert [e["tenant"] for e in events(logs, "policy_held_back")] == ["news"]


def test_a_missing_default_holds_back_every_tenant(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    good = version(registry, "kids")
    (policy_dir / "default.yaml").unlink()
    (policy_dir / "kids.yaml").write_text("on_error: review\n")
    registry.reload()
    assert version(registry, "kids") == good
    assert registry.errors == (
        f"{policy_dir / 'default.yaml'}: missing (every directory needs one)",
    )
    assert all(s.stale for s in registry.status().values())


def test_a_tenant_file_deleted_is_a_warning_naming_what_was_in_force(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    was = version(registry, "kids")
    (policy_dir / "kids.yaml").unlink()  # as a key dropped from a Kubernetes ConfigMap
    with capture_logs() as logs:
        assert registry.reload() is True
    [removed] = events(logs, "policy_removed")
    assert (removed["tenant"], removed["was_in_force"], removed["log_level"]) == (
        "kids",
        was,
        "warning",
    )
    assert registry.resolve("kids", "default") is None  # its uploads: unknown_tenant from now on
    assert not events(logs, "policy_valid_again")
