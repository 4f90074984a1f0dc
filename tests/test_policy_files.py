"""Which entries of a policy directory are read, and how strictly values are typed: FIFOs and
other special files, `.yml` files, strict numbers and booleans, DSA statement categories."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.policy.check import check
from moderator.policy.load import PolicyError
from moderator.policy.registry import PolicyRegistry
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env, default_yaml, parse

TENANCY = TenancySettings(upload_buckets=("uploads",))


def finishes(call: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """`call()`'s result, failing the test (instead of hanging it) when it blocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed back to the test below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert outcome, f"blocked for more than {timeout_s}s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@pytest.fixture
def policy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    (tmp_path / "default.yaml").write_text(default_yaml())
    (tmp_path / "acme.yaml").write_text("categories:\n  O4: {mode: allowed}\n")
    return tmp_path


# -- special files -----------------------------------------------------------------------------


def test_a_fifo_is_an_error_naming_it_not_a_hang(policy_dir: Path) -> None:
    os.mkfifo(policy_dir / "x.yaml")
    result = finishes(lambda: check(policy_dir, TENANCY))
    assert result.errors == (f"{policy_dir / 'x.yaml'}: not a regular file (a FIFO)",)
    assert ("acme", "default") in result.policies
    with pytest.raises(ConfigError, match=r"x\.yaml: not a regular file \(a FIFO\)"):
        finishes(lambda: PolicyRegistry(policy_dir, TENANCY))


def test_policy_validate_reports_a_fifo_and_exits_2(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(policy_dir / "x.yaml")
    assert finishes(lambda: main(["policy", "validate", str(policy_dir)])) == 2
    err = capsys.readouterr().err
    assert err == f"{policy_dir / 'x.yaml'}: not a regular file (a FIFO)\n"


def test_a_fifo_appearing_later_keeps_the_registry_polling(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    os.mkfifo(policy_dir / "late.yml")
    finishes(registry.reload)
    assert registry.errors == (f"{policy_dir / 'late.yml'}: not a regular file (a FIFO)",)
    assert registry.resolve("acme", "default") is not None


def test_a_directory_named_like_a_policy_is_an_error(policy_dir: Path) -> None:
    (policy_dir / "sub.yaml").mkdir()
    result = check(policy_dir, TENANCY)
    assert result.errors == (f"{policy_dir / 'sub.yaml'}: not a regular file (a directory)",)


def test_a_symlink_to_a_policy_file_is_followed(policy_dir: Path) -> None:
    """Kubernetes mounts ConfigMap keys as symlinks."""
    (policy_dir / "real").mkdir()
    (policy_dir / "real" / "kids.yaml").write_text("on_error: block\n")
    (policy_dir / "kids.yaml").symlink_to(policy_dir / "real" / "kids.yaml")
    result = check(policy_dir, TENANCY)
    assert result.errors == ()
    assert ("kids", "default") in result.policies


# -- .yml --------------------------------------------------------------------------------------


def test_yml_files_are_policies_too(policy_dir: Path) -> None:
    (policy_dir / "kids.yml").write_text("on_error: block\n")
    result = check(policy_dir, TENANCY)
    assert result.errors == ()
    assert ("kids", "default") in result.policies
    registry = PolicyRegistry(policy_dir, TENANCY)
    assert registry.tenants() == ("acme", "default", "kids")


def test_a_yml_default_is_the_root(tmp_path: Path) -> None:
    (tmp_path / "default.yml").write_text(default_yaml())
    (tmp_path / "acme.yml").write_text("categories:\n  O4: {mode: allowed}\n")
    assert check(tmp_path, TENANCY).errors == ()
    assert PolicyRegistry(tmp_path, TENANCY).tenants() == ("acme", "default")


def test_a_tenant_in_both_yaml_and_yml_is_an_error_naming_both(policy_dir: Path) -> None:
    (policy_dir / "acme.yml").write_text("categories:\n  O4: {mode: sensitive}\n")
    message = (
        f"{policy_dir / 'acme.yaml'}: tenant 'acme' is also defined by "
        f"{policy_dir / 'acme.yml'}: keep one"
    )
    result = check(policy_dir, TENANCY)
    assert result.errors == (message,)
    assert ("acme", "default") not in result.policies
    with pytest.raises(ConfigError) as caught:
        PolicyRegistry(policy_dir, TENANCY)
    assert str(caught.value) == message


def test_a_duplicate_appearing_later_keeps_the_last_good_version(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    before = registry.resolve("acme", "default")
    (policy_dir / "acme.yml").write_text("categories:\n  O4: {mode: sensitive}\n")
    registry.reload()
    assert registry.stale and "keep one" in registry.errors[0]
    after = registry.resolve("acme", "default")
    assert before is not None and after is not None and after.version == before.version


# -- strict values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("categories:\n  O1:\n    block_at: true\n", 3, "categories.O1.block_at"),
        ("categories:\n  O1: {review_at: false}\n", 2, "categories.O1.review_at"),
        ("none_applying:\n  block_at: '0.5'\n", 2, "none_applying.block_at"),
        ("surfaces:\n  chat:\n    categories:\n      O2: {block_at: yes}\n", 4, "surfaces"),
        ("dsa:\n  review_restricts_visibility: 'yes'\n", 2, "dsa.review_restricts_visibility"),
        ("schema: true\n", 1, "schema"),
        ("schema: 1.0\n", 1, "schema"),
    ],
)
def test_numbers_and_booleans_are_strict(text: str, line: int, field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text, "t")
    error = caught.value
    assert error.line == line, str(error)
    assert str(error).startswith(f"t.yaml:{line}: {field}")
    assert "\n" not in str(error)


def test_plain_numbers_still_load() -> None:
    policy = parse("categories:\n  O1: {block_at: 1, review_at: 0.25}\nschema: 1\n")
    assert policy.categories["O1"].block_at == 1.0
    assert policy.categories["O1"].review_at == 0.25


# -- DSA statement categories ------------------------------------------------------------------


def test_an_unknown_dsa_category_is_an_error_at_its_line() -> None:
    text = (
        "dsa:\n  categories:\n    O1: STATEMENT_CATEGORY_VIOLENCE\n"
        "    O2: STATEMENT_CATEGORY_VIOLENSE\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse(text, "t")
    assert str(caught.value) == (
        "t.yaml:4: dsa.categories.O2: O2 maps to 'STATEMENT_CATEGORY_VIOLENSE', which is not a "
        "DSA statement category (did you mean STATEMENT_CATEGORY_VIOLENCE?)"
    )


def test_a_removed_dsa_category_is_an_error() -> None:
    text = "dsa: {categories: {O4: STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT}}\n"
    with pytest.raises(PolicyError, match="not a DSA statement category"):
        parse(text, "t")


def test_a_directory_that_vanishes_keeps_everything_in_force(policy_dir: Path) -> None:
    registry = PolicyRegistry(policy_dir, TENANCY)
    moved = policy_dir.with_name(policy_dir.name + "-moved")
    policy_dir.rename(moved)
    try:
        registry.reload()
        assert registry.stale and "policies.dir" in registry.errors[0]
        assert registry.resolve("acme", "default") is not None
    finally:
        moved.rename(policy_dir)
    registry.reload()
    assert not registry.stale
