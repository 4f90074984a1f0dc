"""Counting a replay run: how many decisions changed, where, and how the scores moved.

Pure: `build_report` takes the run's pairs (compare.py) and returns a `Report`; `Report.to_json`
is what report.json holds. Its top-level keys run_id, events, changed, transitions, by_tenant,
by_category, missing_objects and policy_versions are an external contract.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moderator.replay.compare import Pair

NO_CATEGORY = "none"  # by_category key for events neither side assessed (errors on both)
BINS = 20  # score-shift histogram: fixed bins of 0.1 from -1 to 1, the last one closed
_MICRO = 1_000_000  # shifts are binned in integer millionths so edges never wobble


@dataclass(frozen=True)
class GroupCounts:
    """The counts of one tenant or one surface."""

    events: int = 0
    changed: int = 0
    missing_objects: int = 0
    no_original: int = 0
    transitions: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "events": self.events,
            "missing_objects": self.missing_objects,
            "no_original": self.no_original,
            "transitions": dict(sorted(self.transitions.items())),
        }


@dataclass(frozen=True)
class ScoreSummary:
    """Score shifts (new minus old) in brief: None statistics when no pair had two scores."""

    count: int
    mean: float | None
    min: float | None
    max: float | None
    edges: tuple[float, ...]  # BINS + 1 edges from -1.0 to 1.0
    counts: tuple[int, ...]  # BINS counts; a shift of 0 counts in the bin from 0 to 0.1
    unchanged: int = 0  # shifts of exactly 0 (shifts are rounded to 6 places, so 0 is exact)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "unchanged": self.unchanged,
            "histogram": {"counts": list(self.counts), "edges": list(self.edges)},
            "max": self.max,
            "mean": self.mean,
            "min": self.min,
        }


@dataclass(frozen=True)
class Report:
    """Everything report.json, report.md and report.html say about one run."""

    run_id: str
    events: int
    changed: int
    missing_objects: int
    no_original: int
    transitions: dict[str, int]  # "old->new" over compared pairs, unchanged ones included
    by_tenant: dict[str, GroupCounts]
    by_surface: dict[str, GroupCounts]
    by_category: dict[str, dict[str, int]]  # code -> {"events", "changed"}
    score_shifts: tuple[float, ...]
    score_summary: ScoreSummary
    paths: dict[str, int]
    errors: dict[str, int]  # error code of the replayed verdict -> events
    policy_versions: dict[str, dict[str, list[str]]]  # "tenant/surface" -> {"old", "new"}
    models: dict[str, list[str]]  # {"old": [...], "new": [...]} model ids
    header: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with sorted keys; score shifts appear as their summary only."""
        document = {
            "by_category": {k: dict(sorted(v.items())) for k, v in self.by_category.items()},
            "by_surface": {k: v.to_json() for k, v in self.by_surface.items()},
            "by_tenant": {k: v.to_json() for k, v in self.by_tenant.items()},
            "changed": self.changed,
            "errors": self.errors,
            "events": self.events,
            "header": self.header,
            "missing_objects": self.missing_objects,
            "models": self.models,
            "no_original": self.no_original,
            "paths": self.paths,
            "policy_versions": self.policy_versions,
            "run_id": self.run_id,
            "score_shifts": self.score_summary.to_json(),
            "transitions": self.transitions,
        }
        return {k: _sorted(v) for k, v in sorted(document.items())}


def build_report(pairs: Iterable[Pair], *, run_id: str, header: Mapping[str, Any]) -> Report:
    """Count `pairs` (one per replayed event) into a Report; `header` is kept as given."""
    events = changed = missing = no_original = 0
    transitions: Counter[str] = Counter()
    tenants: dict[str, _Group] = defaultdict(_Group)
    surfaces: dict[str, _Group] = defaultdict(_Group)
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    shifts: list[float] = []
    paths: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    versions: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"old": set(), "new": set()})
    models: dict[str, set[str]] = {"old": set(), "new": set()}
    for pair in pairs:
        events += 1
        changed += pair.changed
        missing += pair.kind == "missing_object"
        no_original += pair.kind == "no_original"
        if pair.transition is not None:
            transitions[pair.transition] += 1
        tenants[pair.tenant].add(pair)
        surfaces[pair.surface].add(pair)
        category = categories[pair.category or NO_CATEGORY]
        category["events"] += 1
        category["changed"] += pair.changed
        if (shift := pair.score_shift) is not None:
            shifts.append(shift)
        paths[pair.path] += 1
        if pair.replayed.error is not None:
            errors[pair.replayed.error] += 1
        seen = versions[f"{pair.tenant}/{pair.surface}"]
        seen["new"].add(pair.replayed.policy_version)
        if pair.replayed.model is not None:
            models["new"].add(pair.replayed.model)
        if pair.original is not None:
            seen["old"].add(pair.original.policy_version)
            if pair.original.model is not None:
                models["old"].add(pair.original.model)
    return Report(
        run_id=run_id,
        events=events,
        changed=changed,
        missing_objects=missing,
        no_original=no_original,
        transitions=dict(sorted(transitions.items())),
        by_tenant={k: tenants[k].counts() for k in sorted(tenants)},
        by_surface={k: surfaces[k].counts() for k in sorted(surfaces)},
        by_category={
            k: {"changed": categories[k]["changed"], "events": categories[k]["events"]}
            for k in sorted(categories)
        },
        score_shifts=tuple(shifts),
        score_summary=summarize_shifts(shifts),
        paths=dict(sorted(paths.items())),
        errors=dict(sorted(errors.items())),
        policy_versions={
            name: {side: sorted(seen[side]) for side in ("new", "old")}
            for name, seen in sorted(versions.items())
        },
        models={side: sorted(ids) for side, ids in sorted(models.items())},
        header=dict(header),
    )


def summarize_shifts(shifts: Iterable[float]) -> ScoreSummary:
    """Count, mean, extremes and a fixed-bin histogram of score shifts in [-1, 1]."""
    values = list(shifts)
    counts = [0] * BINS
    step = 2 * _MICRO // BINS
    for value in values:
        micro = round(value * _MICRO) + _MICRO  # 0 .. 2 * _MICRO
        counts[min(max(micro // step, 0), BINS - 1)] += 1
    edges = tuple(round(-1.0 + i * 2 / BINS, 6) for i in range(BINS + 1))
    if not values:
        return ScoreSummary(0, None, None, None, edges, tuple(counts))
    return ScoreSummary(
        count=len(values),
        mean=round(sum(values) / len(values), 6),
        min=min(values),
        max=max(values),
        edges=edges,
        counts=tuple(counts),
        unchanged=sum(1 for value in values if value == 0),
    )


class _Group:
    """A tenant's or a surface's running counts."""

    def __init__(self) -> None:
        self.events = self.changed = self.missing = self.no_original = 0
        self.transitions: Counter[str] = Counter()

    def add(self, pair: Pair) -> None:
        self.events += 1
        self.changed += pair.changed
        self.missing += pair.kind == "missing_object"
        self.no_original += pair.kind == "no_original"
        if pair.transition is not None:
            self.transitions[pair.transition] += 1

    def counts(self) -> GroupCounts:
        return GroupCounts(
            events=self.events,
            changed=self.changed,
            missing_objects=self.missing,
            no_original=self.no_original,
            transitions=dict(sorted(self.transitions.items())),
        )


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value
