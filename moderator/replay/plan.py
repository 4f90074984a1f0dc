"""A replay run's plan: the offset ranges captured at its start and everything it was asked.

The plan is written to `run.json` in the report directory before the first event is read, so a
resumed run (`--resume RUN_ID`) reads exactly the same ranges, with the same filter, policies and
engine, and finds its results on the output topic after the offsets recorded here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.paths import directory_problem
from moderator.replay.request import EventFilter, OffsetRange

PLAN_FILE = "run.json"
PLAN_VERSION = 1


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    created_at: str  # RFC 3339, UTC
    uploads_topic: str
    output_topic: str
    ranges: tuple[OffsetRange, ...]
    event_filter: EventFilter
    range_text: str  # the range as asked, for people (report header)
    lookup: str  # how the ranges were found: offsets, timestamp lookup, scan, whole topic
    policies_dir: str
    engine: str
    model: str | None
    reuse_assessments: bool = False
    rate: float | None = None
    # Where this run's results start on the output topic, per partition (its end at the start).
    output_start: dict[int, int] = field(default_factory=dict)
    # --live-policies: what the report compares with (None: the settings' policies.dir). Kept
    # here so that a resumed run's report compares with the same directory.
    live_policies_dir: str | None = None
    # What a resume must find unchanged (moderator.replay.pinned); None in plans from before
    # they were recorded. `config`: the settings file the run was started with, if any.
    config: str | None = None
    pinned: dict[str, str] | None = None
    policy_versions: dict[str, str] | None = None
    live_policy_versions: dict[str, str] | None = None

    @property
    def events_upper_bound(self) -> int:
        return sum(r.end - r.start for r in self.ranges)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = PLAN_VERSION
        data["event_filter"]["tenants"] = sorted(self.event_filter.tenants)
        data["output_start"] = {str(p): o for p, o in sorted(self.output_start.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPlan:
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unknown plan version {data.get('version')!r}")
        filt = dict(data["event_filter"])
        filt["tenants"] = frozenset(filt["tenants"])
        return cls(
            run_id=data["run_id"],
            created_at=data["created_at"],
            uploads_topic=data["uploads_topic"],
            output_topic=data["output_topic"],
            ranges=tuple(OffsetRange(**r) for r in data["ranges"]),
            event_filter=EventFilter(**filt),
            range_text=data["range_text"],
            lookup=data["lookup"],
            policies_dir=data["policies_dir"],
            engine=data["engine"],
            model=data["model"],
            reuse_assessments=bool(data["reuse_assessments"]),
            rate=data["rate"],
            output_start={int(p): int(o) for p, o in data["output_start"].items()},
            live_policies_dir=data.get("live_policies_dir"),  # absent from older plans
            config=data.get("config"),
            pinned=_strings(data.get("pinned")),
            policy_versions=_strings(data.get("policy_versions")),
            live_policy_versions=_strings(data.get("live_policy_versions")),
        )


def _strings(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def save_plan(plan: RunPlan, directory: Path) -> Path:
    """Write run.json atomically (a crash never leaves half a plan)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PLAN_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".run-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(plan.to_json(), out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_plan(directory: Path, run_id: str) -> RunPlan:
    """The plan of `run_id` from `directory`; ConfigError naming the file when it is unusable."""
    check_writable(directory)
    path = directory / PLAN_FILE
    try:
        plan = _read(path)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"--resume {run_id}: no {PLAN_FILE} in {directory} (pass the run's --report directory)"
        ) from exc
    except _UNREADABLE as exc:
        raise ConfigError(f"--resume {run_id}: {path} is not a replay plan: {exc}") from exc
    if plan.run_id != run_id:
        raise ConfigError(f"--resume {run_id}: {path} belongs to run {plan.run_id}")
    return plan


def check_new_report(directory: Path) -> None:
    """A new run's report directory can be written and holds no other run's plan (writing
    there would lose that run's report and the means to resume it); ConfigError otherwise."""
    check_writable(directory)
    path = directory / PLAN_FILE
    if not path.exists() and not path.is_symlink():
        if directory.is_dir() and any(directory.iterdir()):
            raise ConfigError(
                f"--report {directory} holds other files and no replay plan ({PLAN_FILE}): the "
                "report would overwrite some of them and sit beside the rest; choose an empty "
                "or new directory"
            )
        return
    try:
        other = _read(path).run_id
    except _UNREADABLE as exc:
        raise ConfigError(
            f"--report {directory}: {path} is not a replay plan ({exc}); choose another directory"
        ) from exc
    resume = f"--resume {other}"
    if directory != Path(f"replay-{other}"):
        resume += f" --report {directory}"
    raise ConfigError(
        f"--report {directory} holds the report of run {other}; resume it with {resume} "
        "or choose another directory"
    )


def check_writable(directory: Path) -> None:
    """ConfigError naming --report when `directory` cannot be a directory to write in."""
    problem = directory_problem(directory)
    if problem is not None:
        raise ConfigError(f"--report: {problem}")


# Reading a plan fails with these: JSON of any shape, a file that cannot be read.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)


def _read(path: Path) -> RunPlan:
    return RunPlan.from_json(json.loads(path.read_text(encoding="utf-8")))
