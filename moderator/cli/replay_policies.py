"""The policy diff of a replay report: the live policy directory against the replayed one.

The live directory is `--live-policies DIR`, or the settings' `policies.dir` without it. After a
rollout the two are the same directory, so the report can only compare with the policies before
it when the flag names them; every line that says nothing was compared says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HINT = "pass --live-policies DIR to compare with the live service's policy directory"
SAME = (
    "the replay uses the live policy directory; to compare with another (the one before a "
    "rollout), pass --live-policies DIR"
)


def live_policies(given: str | None, settings_dir: Path) -> tuple[Path, str]:
    """The directory the replay is compared with, and where it came from (for the header)."""
    if given is not None:
        return Path(given), "--live-policies"
    return settings_dir.resolve(), "policies.dir"


def policy_diff(live_dir: Path, replayed: Path, tenancy: Any) -> list[str]:
    """What `policy diff LIVE REPLAYED` says, or why it cannot say it: never an error, since
    the run it describes is already done."""
    from moderator.cli.policy import format_diff
    from moderator.errors import ConfigError
    from moderator.policy.check import check
    from moderator.policy.diff import diff_policies

    if live_dir.resolve() == replayed.resolve():
        return [SAME]
    try:
        before = check(live_dir, tenancy)
        after = check(replayed, tenancy)
    except ConfigError as exc:
        return [f"not compared: {exc}; {HINT}"]
    if before.errors or after.errors:
        broken = live_dir if before.errors else replayed
        return [f"policies in {broken} have errors; not compared"]
    return format_diff(diff_policies(before.policies, after.policies))
