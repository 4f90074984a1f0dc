"""Allowed key prefixes are folders: a prefix without a trailing `/` would reach the keys of
every tenant whose id starts with it (`gam` matches `gamma/...`), so it is refused at start-up,
on reload (the last good version stays) and by `policy validate`; bucket names are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.policy.registry import PolicyRegistry
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env, default_yaml

TENANCY = TenancySettings(upload_buckets=("uploads",))
GAM = "allowed: {buckets: [uploads], prefixes: [gam]}\n"
REASON = (
    "allowed.prefixes: 'gam' must end with '/' (as written it also matches any key starting "
    "with 'gam', such as 'gam-other/...'); write 'gam/'"
)


@pytest.fixture
def policy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    (tmp_path / "default.yaml").write_text(default_yaml())
    (tmp_path / "gamma.yaml").write_text("on_error: block\n")
    return tmp_path


def test_the_default_prefix_keeps_tenants_apart(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY, default_for_unknown=True)
    gam = registry.resolve("gam", "default")
    assert gam is not None and gam.resolved.prefixes == ("gam/",)
    assert gam.allows_object("uploads", "gam/a.png")
    assert not gam.allows_object("uploads", "gamma/secret.png")


def test_a_prefix_with_its_slash_keeps_tenants_apart(policy_dir: Path) -> None:
    (policy_dir / "gam.yaml").write_text("allowed: {buckets: [uploads], prefixes: [gam/]}\n")
    gam = PolicyRegistry(policy_dir, TENANCY).resolve("gam", "default")
    assert gam is not None and gam.allows_object("uploads", "gam/a.png")
    assert not gam.allows_object("uploads", "gamma/secret.png")


def test_start_up_refuses_a_prefix_without_its_slash(policy_dir: Path) -> None:
    (policy_dir / "gam.yaml").write_text(GAM)
    with pytest.raises(ConfigError) as info:
        PolicyRegistry(policy_dir, TENANCY)
    assert str(info.value).startswith(f"{policy_dir / 'gam.yaml'}:1: {REASON}")


def test_a_reload_keeps_the_last_good_locations(policy_dir: Path) -> None:
    gam = policy_dir / "gam.yaml"
    gam.write_text("allowed: {buckets: [uploads], prefixes: [gam/]}\n")
    registry = PolicyRegistry(policy_dir, TENANCY)
    good = registry.resolve("gam", "default")
    gam.write_text(GAM)
    registry.reload()
    kept = registry.resolve("gam", "default")
    assert kept is not None and good is not None and kept.version == good.version
    assert not kept.allows_object("uploads", "gamma/secret.png")
    assert registry.status()["gam"].stale
    assert registry.errors == (f"{gam}: {REASON}",)


def test_validate_names_the_field_the_file_and_the_line(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (policy_dir / "gam.yaml").write_text(
        "description: gam\nallowed:\n  buckets: [uploads]\n  prefixes:\n    - gam\n"
    )
    (policy_dir / "star.yaml").write_text("allowed:\n  buckets: ['*']\n")
    assert main(["policy", "validate", str(policy_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{policy_dir / 'gam.yaml'}:4: {REASON}",
        f"{policy_dir / 'star.yaml'}:2: allowed.buckets: '*' is not a bucket name: 3 to 63 "
        "lower-case letters, digits, '.' and '-', starting and ending with a letter or digit, "
        "no '..', not an IP address",
    ]
