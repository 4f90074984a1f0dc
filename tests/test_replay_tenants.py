"""Tenants a replay would judge without a policy: warned about once each, and the run goes on.

A replay directory without `news.yaml` makes every news event an `unknown_tenant` error verdict;
the operator is told before the run for the tenants known then, else at the tenant's first event.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from moderator.policy.bundled import write_default_policy
from moderator.replay.tenants import (
    PolicyGaps,
    absent_tenants,
    gap_warning,
    tenant_check,
    uncovered,
)
from moderator.service import build_policies
from tests.harness import settings_for

WARNING = (
    "tenant news has events in the range but no policy in /srv/policies-nonews: its verdicts "
    "will be unknown_tenant errors"
)


@pytest.fixture
def nonews(tmp_path: Path) -> Path:
    directory = tmp_path / "policies-nonews"
    write_default_policy(directory)
    for tenant in ("acme", "kids"):
        (directory / f"{tenant}.yaml").write_text("on_error: review\n")
    return directory


def test_the_warning_names_the_tenant_the_directory_and_the_outcome() -> None:
    assert gap_warning("news", "/srv/policies-nonews") == WARNING


def test_each_tenant_is_warned_about_once() -> None:
    lines: list[str] = []
    gaps = PolicyGaps("/srv/policies-nonews", lines.append)
    threads = [threading.Thread(target=gaps.missing, args=(t,)) for t in ["news", "zeta"] * 20]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines) == 2
    assert sorted(lines) == [
        gap_warning("news", "/srv/policies-nonews"),
        gap_warning("zeta", "/srv/policies-nonews"),
    ]


def test_uncovered_reads_the_policy_directory(nonews: Path) -> None:
    assert uncovered(settings_for(nonews), ["acme", "news", "kids", "zeta"]) == ["news", "zeta"]


def test_nothing_is_uncovered_when_unknown_tenants_get_the_default(nonews: Path) -> None:
    settings = settings_for(nonews, **{"policies.default_for_unknown": True})
    assert uncovered(settings, ["news"]) == []


def test_an_unreadable_directory_warns_about_nothing(tmp_path: Path) -> None:
    """A dry run does not check the directory (a run has refused it already)."""
    assert uncovered(settings_for(tmp_path / "missing"), ["news"]) == []


def test_the_run_checks_each_event_as_the_pipeline_resolves_it(nonews: Path) -> None:
    registry = build_policies(settings_for(nonews))
    missing: list[str] = []
    check = tenant_check(registry, missing.append)
    assert check is not None
    for tenant, surface in [("acme", "default"), ("news", "default"), ("kids", "comments")]:
        check(tenant, surface)
    assert missing == ["news"]
    assert tenant_check(registry, None) is None


def test_a_named_tenant_without_events_is_warned_about_with_the_tenants_that_had_some() -> None:
    assert absent_tenants({"kids", "nosuch"}, {"kids": 3, "news": 1}) == [
        "--tenant nosuch: no event of this tenant to replay in the range; "
        "tenants in the range: kids, news"
    ]
    assert absent_tenants({"kids"}, {"kids": 3}) == []
    assert absent_tenants(set(), {"kids": 3}) == []  # no --tenant: every tenant
    many = {f"t{i:02d}" for i in range(11)}
    assert absent_tenants({"nosuch"}, many) == [
        "--tenant nosuch: no event of this tenant to replay in the range"
    ]


def test_a_dry_run_names_the_tenants_its_filter_left_out() -> None:
    """`--tenant kisd` alone keeps nothing: the list comes from every event the range holds."""
    assert absent_tenants({"kisd"}, {}, {"kids", "news"}) == [
        "--tenant kisd: no event of this tenant to replay in the range; "
        "tenants in the range: kids, news"
    ]
    # seen in the range, but the time window or the sample kept none of its events
    assert absent_tenants({"kids"}, {}, {"kids"}) == [
        "--tenant kids: no event of this tenant to replay in the range; tenants in the range: kids"
    ]
