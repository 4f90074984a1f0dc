"""A resumed replay judges like the run it continues: same settings file, settings, policies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from moderator.cli.main import build_parser
from moderator.cli.replay_resume import check_unchanged, resume_config
from moderator.errors import ConfigError
from moderator.policy.bundled import write_default_policy
from moderator.replay.pinned import (
    changed_settings,
    changed_versions,
    listed,
    pinned_settings,
    policy_versions,
)
from moderator.replay.plan import RunPlan, save_plan
from moderator.settings import Settings, load_settings
from tests.test_replay_header import PLAN as HEADER_PLAN


def _settings(**overrides: object) -> Settings:
    return load_settings(None, {"engine.kind": "fake", **overrides})


def _policies(directory: Path, kids: str) -> Path:
    write_default_policy(directory)
    (directory / "kids.yaml").write_text(f"on_error: {kids}\n", encoding="utf-8")
    return directory


def test_a_setting_that_changes_answers_is_pinned_and_pacing_is_not() -> None:
    plain = pinned_settings(_settings())
    assert "engine.fake.unsafe_rate" in plain and "tenancy.bucket_map" in plain
    for free in ("engine.concurrency", "fetch.concurrency", "engine.openai.api_key"):
        assert free not in plain
    assert not any(key.startswith(("kafka.", "audit.", "fetch.s3.")) for key in plain)
    assert all(len(digest) == 16 for digest in plain.values())

    riskier = pinned_settings(_settings(**{"engine.fake.unsafe_rate": 0.9}))
    assert changed_settings(plain, riskier) == ["engine.fake.unsafe_rate"]
    faster = pinned_settings(_settings(**{"engine.concurrency": 4, "fetch.concurrency": 2}))
    assert changed_settings(plain, faster) == []
    mapped = pinned_settings(_settings(**{"tenancy.bucket_map": {"kids-uploads": "kids"}}))
    assert changed_settings(plain, mapped) == ["tenancy.bucket_map"]


def test_a_setting_known_to_one_release_only_is_not_a_change() -> None:
    plain = pinned_settings(_settings())
    older = {k: v for k, v in plain.items() if k != "engine.fake.seed"}
    assert changed_settings(older, plain) == []


def test_policy_versions_name_what_changed_was_added_or_is_gone(tmp_path: Path) -> None:
    tenancy = _settings().tenancy
    review = policy_versions(_policies(tmp_path / "a", "review"), tenancy)
    block = policy_versions(_policies(tmp_path / "b", "block"), tenancy)
    assert "kids/default" in review
    [line] = changed_versions(review, block)
    assert line == f"kids/default {review['kids/default'][:8]} -> {block['kids/default'][:8]}"
    without = {k: v for k, v in review.items() if not k.startswith("kids/")}
    assert changed_versions(review, without) == [
        f"kids/default {review['kids/default'][:8]} -> none"
    ]
    assert policy_versions(tmp_path / "missing", tenancy) == {}
    assert listed(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


def _plan(tmp_path: Path, settings: Settings, live: Path | None = None) -> RunPlan:
    return dataclasses.replace(
        HEADER_PLAN,
        engine="fake",
        policies_dir=str(settings.policies.dir),
        pinned=pinned_settings(settings),
        policy_versions=policy_versions(settings.policies.dir, settings.tenancy),
        live_policy_versions=policy_versions(live, settings.tenancy) if live else None,
        live_policies_dir=str(live) if live else None,
    )


def test_a_resume_is_refused_naming_what_changed(tmp_path: Path) -> None:
    replayed = _policies(tmp_path / "next", "block")
    live = _policies(tmp_path / "live", "review")
    settings = _settings(**{"policies.dir": str(replayed)})
    plan = _plan(tmp_path, settings, live)
    check_unchanged(plan, settings, live, live_given=False)  # nothing changed

    riskier = _settings(**{"policies.dir": str(replayed), "engine.fake.unsafe_rate": 0.5})
    with pytest.raises(ConfigError, match=r"settings changed since the run started "):
        check_unchanged(plan, riskier, live, live_given=False)

    (replayed / "kids.yaml").write_text("on_error: allow\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"the policies in {replayed} changed .*kids/default"):
        check_unchanged(plan, settings, live, live_given=False)
    _policies(replayed, "block")  # restored: the same version again
    check_unchanged(plan, settings, live, live_given=False)

    (live / "kids.yaml").write_text("on_error: block\n", encoding="utf-8")  # a rollout
    with pytest.raises(ConfigError, match=r"the report compares with.*pass --live-policies DIR"):
        check_unchanged(plan, settings, live, live_given=False)
    check_unchanged(plan, settings, live, live_given=True)


def test_a_plan_from_before_the_pins_is_resumed_unchecked(tmp_path: Path) -> None:
    settings = _settings(**{"policies.dir": str(_policies(tmp_path / "p", "block"))})
    old = dataclasses.replace(HEADER_PLAN, policies_dir=str(settings.policies.dir))
    save_plan(old, tmp_path / "rep")
    data = json.loads((tmp_path / "rep" / "run.json").read_text(encoding="utf-8"))
    for key in ("config", "pinned", "policy_versions", "live_policy_versions"):
        del data[key]
    loaded = RunPlan.from_json(data)
    assert loaded == old
    check_unchanged(
        loaded, _settings(**{"engine.fake.unsafe_rate": 1.0}), tmp_path, live_given=False
    )


def test_a_resume_reads_the_runs_settings_file_unless_given_one(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("engine:\n  kind: fake\n", encoding="utf-8")
    save_plan(dataclasses.replace(HEADER_PLAN, config=str(config)), tmp_path / "rep")
    argv = ["replay", "--resume", "r1", "--report", str(tmp_path / "rep")]
    assert resume_config(build_parser().parse_args(argv)) == config
    other = tmp_path / "other.yaml"
    assert resume_config(build_parser().parse_args([*argv, "--config", str(other)])) == other
    config.unlink()
    with pytest.raises(ConfigError, match=r"the run's settings file .* is gone; pass --config"):
        resume_config(build_parser().parse_args(argv))
    save_plan(HEADER_PLAN, tmp_path / "rep")  # started without a settings file
    assert resume_config(build_parser().parse_args(argv)) is None
