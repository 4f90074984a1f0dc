"""`moderator replay --resume RUN_ID`: the plan it continues, and what must not have changed.

A resumed run reads the settings file the run was started with unless `--config` names one,
and refuses, naming what changed, when the settings that decide a verdict or the policy versions
differ from the plan's (moderator.replay.pinned).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.replay.plan import RunPlan, load_plan
from moderator.replay.request import check_run_id

RANGE_FLAGS = ("from_", "to", "offsets", "tenant", "sample", "policies", "engine", "model")


def report_dir(args: argparse.Namespace, run_id: str) -> Path:
    return args.report or Path(f"replay-{run_id}")


def resume_config(args: argparse.Namespace) -> Path | None:
    """The settings file a resume reads: `--config` when given, else the run's own."""
    if args.config is not None:
        return Path(args.config)
    run_id = check_run_id(args.resume)
    plan = load_plan(report_dir(args, run_id), run_id)
    if plan.config is None:
        return None
    path = Path(plan.config)
    if not path.is_file():
        raise ConfigError(
            f"--resume {run_id}: the run's settings file {path} is gone; pass --config FILE "
            "with the settings it was started with"
        )
    return path


def resumed(args: argparse.Namespace) -> tuple[RunPlan, Path]:
    """The plan of `--resume RUN_ID`, with the flags a resume may change applied."""
    run_id = check_run_id(args.resume)
    # `is not None`: an empty value (`--from "$UNSET"`) is given too, and must be dropped.
    flags = (*RANGE_FLAGS, "output_topic")
    given = [f"--{f.rstrip('_').replace('_', '-')}" for f in flags if getattr(args, f) is not None]
    given += [
        f"--{f.replace('_', '-')}"
        for f in ("reuse_assessments", "allow_live_output")
        if getattr(args, f)
    ]
    if given:
        raise ConfigError(
            f"--resume {run_id}: the run's plan fixes its range, policies and engine; "
            f"drop {', '.join(given)}"
        )
    directory = report_dir(args, run_id)
    plan = load_plan(directory, run_id)
    if args.rate is not None:  # pacing changes no result: a resumed run may go faster or slower
        plan = dataclasses.replace(plan, rate=args.rate)
    if args.live_policies is not None:  # only the report's policy diff reads it
        plan = dataclasses.replace(plan, live_policies_dir=str(args.live_policies.resolve()))
    return plan, directory


def plan_overrides(plan: RunPlan) -> dict[str, Any]:
    return {
        "policies.dir": plan.policies_dir,
        "engine.kind": plan.engine,
        "engine.model": plan.model,
    }


def check_unchanged(plan: RunPlan, settings: Any, live_dir: Path, *, live_given: bool) -> None:
    """ConfigError naming what differs from the plan: a pinned setting, a policy version of the
    replayed directory, or (without `--live-policies`) of the directory the report compares
    with. `settings`: what the resumed run would run with."""
    from moderator.replay.pinned import (
        changed_settings,
        changed_versions,
        listed,
        pinned_settings,
        policy_versions,
    )

    head = f"--resume {plan.run_id}"
    if plan.pinned is not None:
        changed = changed_settings(plan.pinned, pinned_settings(settings))
        if changed:
            started = f"--config {plan.config}" if plan.config else "no settings file"
            raise ConfigError(
                f"{head}: settings changed since the run started ({listed(changed)}); every "
                f"event of a run is judged with the same engine and limits: restore them (the "
                f"run was started with {started}) or start a new run"
            )
    if plan.policy_versions is not None:
        now = policy_versions(Path(plan.policies_dir), settings.tenancy)
        changed = changed_versions(plan.policy_versions, now)
        if changed:
            raise ConfigError(
                f"{head}: the policies in {plan.policies_dir} changed since the run started "
                f"({listed(changed)}); every event of a run is judged under the same policy "
                "versions: restore the files or start a new run"
            )
    if plan.live_policy_versions is not None and not live_given:
        now = policy_versions(live_dir, settings.tenancy)
        changed = changed_versions(plan.live_policy_versions, now)
        if changed:
            raise ConfigError(
                f"{head}: the policies the report compares with, in {live_dir}, changed since "
                f"the run started ({listed(changed)}); pass --live-policies DIR naming the "
                "directory to compare with"
            )
