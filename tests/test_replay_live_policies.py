"""`moderator replay --live-policies DIR`: the directory the report's policy diff compares with.

After a rollout the live directory is the replayed one, so without the flag the report could
only say that both are the same; every line that compares nothing says how to compare.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from moderator.cli.main import build_parser
from moderator.cli.replay_policies import live_policies, policy_diff
from moderator.cli.replay_resume import resumed
from moderator.policy.bundled import write_default_policy
from moderator.replay.plan import RunPlan, load_plan, save_plan
from moderator.replay.summary import run_header
from moderator.replay.tables import header_items
from moderator.settings import load_settings
from tests.test_replay_header import PLAN as HEADER_PLAN

PLAN = dataclasses.replace(HEADER_PLAN, engine="fake")


def _policies(directory: Path, action: str) -> Path:
    write_default_policy(directory)
    (directory / "kids.yaml").write_text(f"on_error: {action}\n", encoding="utf-8")
    return directory


def test_the_live_directory_is_the_flag_or_the_setting(tmp_path: Path) -> None:
    assert live_policies("/srv/before", tmp_path) == (Path("/srv/before"), "--live-policies")
    assert live_policies(None, tmp_path) == (tmp_path.resolve(), "policies.dir")


def test_after_a_rollout_the_flag_compares_with_the_old_directory(tmp_path: Path) -> None:
    tenancy = load_settings(None, {}).tenancy
    before = _policies(tmp_path / "before", "review")
    live = _policies(tmp_path / "live", "block")  # rolled out: the replayed directory
    same = policy_diff(live, live, tenancy)
    assert len(same) == 1 and "pass --live-policies DIR" in same[0], same
    diff = policy_diff(before, live, tenancy)
    assert any("kids" in line for line in diff), diff


def test_not_compared_suggests_the_flag(tmp_path: Path) -> None:
    tenancy = load_settings(None, {}).tenancy
    lines = policy_diff(tmp_path / "x", _policies(tmp_path / "next", "block"), tenancy)
    assert lines == [
        f"not compared: policies.dir: {tmp_path / 'x'} is not a directory; "
        "pass --live-policies DIR to compare with the live service's policy directory"
    ]


def test_the_header_shows_the_directory_and_where_it_came_from() -> None:
    from moderator.replay.originals import TopicOriginals
    from moderator.replay.report import build_report

    originals = TopicOriginals({}, "moderation.verdicts")
    header = run_header(
        PLAN, originals, live_policies="/srv/before", live_policies_from="--live-policies"
    )
    items = dict(header_items(build_report([], run_id="r1", header=header)))
    assert items["live policies"] == "/srv/before"
    assert items["live policies from"] == "--live-policies"


def test_the_plan_keeps_the_flag_for_a_resume(tmp_path: Path) -> None:
    before = _policies(tmp_path / "before", "review")
    save_plan(PLAN, tmp_path / "rep")
    data = json.loads((tmp_path / "rep" / "run.json").read_text(encoding="utf-8"))
    assert data["live_policies_dir"] is None
    del data["live_policies_dir"]  # a plan written before the flag existed
    assert RunPlan.from_json(data) == PLAN
    argv = ["replay", "--resume", "r1", "--report", str(tmp_path / "rep")]
    plan, _ = resumed(build_parser().parse_args([*argv, "--live-policies", str(before)]))
    assert plan.live_policies_dir == str(before.resolve())
    save_plan(plan, tmp_path / "rep")
    kept, _ = resumed(build_parser().parse_args(argv))
    assert kept.live_policies_dir == str(before.resolve())
    assert load_plan(tmp_path / "rep", "r1") == kept
