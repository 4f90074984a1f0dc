"""A report laid out once as titled tables, so report.md and report.html say the same things.

Pure: plain values in, `Table`s and JSON-ready rows out. Cells hold raw data; `cell_text` shows
a control character (an ESC or line break in an object key or surface) as an escape, and each
writer escapes the text for its own format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from moderator.explain.render import num
from moderator.replay.compare import Pair
from moderator.replay.report import GroupCounts, Report, ScoreSummary
from moderator.text import safe_line
from moderator.words import counted

CHANGED_SHOWN = 50  # changed events listed in report.md / report.html (changed.jsonl has all)

Cell = str | int | float | None
_CHANGED_COLUMNS = (
    *("Event", "Tenant", "Surface", "Object key", "Original", "Replayed", "Category"),
    *("Original score", "Replayed score", "Original policy", "Replayed policy", "Path"),
)


@dataclass(frozen=True)
class Table:
    """One titled table; `id` names it in report.html (`<table id=...>`)."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""  # a sentence under the title


def cell_text(value: Cell) -> str:
    """A cell as text; a float as recorded (`0.3496`, never `0.350`), as `explain` and `audit
    query` show it, since a rounded score next to a threshold reads as another number."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return num(value)
    return safe_line(str(value))


def changed_record(pair: Pair) -> dict[str, Any]:
    """A changed event as one line of changed.jsonl (sorted keys)."""
    original = pair.original
    return {
        "category": pair.category,
        "event_id": pair.event_id,
        "key": pair.key,
        "new_decision": pair.replayed.decision,
        "new_error": pair.replayed.error,
        "new_model": pair.replayed.model,
        "new_policy_version": pair.replayed.policy_version,
        "new_score": pair.replayed.score,
        "old_decision": original.decision if original else None,
        "old_error": original.error if original else None,
        "old_model": original.model if original else None,
        "old_policy_version": original.policy_version if original else None,
        "old_score": original.score if original else None,
        "path": pair.path,
        "surface": pair.surface,
        "tenant": pair.tenant,
    }


def changed_in_order(pairs: Iterable[Pair]) -> list[Pair]:
    """The changed pairs among `pairs`, sorted by event id."""
    return sorted((p for p in pairs if p.changed), key=lambda p: p.event_id)


def header_items(report: Report) -> list[tuple[str, str]]:
    """The run header as (label, value) lines; `policy_diff` is shown apart (policy_diff())."""
    items = [("run", report.run_id)]
    for key in sorted(report.header):
        if key != "policy_diff":
            items.append((key.replace("_", " "), _text(report.header[key])))
    for side in ("old", "new"):
        if report.models.get(side):
            items.append((f"{side} model", ", ".join(report.models[side])))
    return items


def policy_diff(report: Report) -> list[str]:
    lines = report.header.get("policy_diff") or []
    return [str(line) for line in lines] if isinstance(lines, list | tuple) else [str(lines)]


def report_tables(report: Report, changed: Sequence[Pair]) -> list[Table]:
    """The report's tables in reading order; `changed` is sorted (changed_in_order())."""
    summary = report.score_summary
    shown = changed[:CHANGED_SHOWN]
    return [
        Table(
            "policy-versions",
            "Policy versions",
            ("Tenant/surface", "Original", "Replayed"),
            tuple(
                (name, ", ".join(v["old"]) or None, ", ".join(v["new"]) or None)
                for name, v in report.policy_versions.items()
            ),
        ),
        Table(
            "totals",
            "Totals",
            ("Measure", "Events"),
            (
                ("events", report.events),
                ("changed", report.changed),
                ("compared", sum(report.transitions.values())),
                ("missing objects", report.missing_objects),
                ("no original", report.no_original),
            ),
        ),
        Table(
            "transitions",
            "Decision transitions",
            ("Original", "Replayed", "Events"),
            tuple((*k.split("->", 1), n) for k, n in report.transitions.items()),
            "Compared events only: missing objects and events without an original are apart.",
        ),
        _groups("by-tenant", "By tenant", "Tenant", report.by_tenant),
        _groups("by-surface", "By surface", "Surface", report.by_surface),
        Table(
            "by-category",
            "By category",
            ("Category", "Events", "Changed"),
            tuple((k, v["events"], v["changed"]) for k, v in report.by_category.items()),
            "The replayed category, or the original's when the replay has none.",
        ),
        Table("paths", "Replay paths", ("Path", "Events"), tuple(report.paths.items())),
        Table("errors", "Replay errors", ("Error", "Events"), tuple(report.errors.items())),
        Table(
            "missing-objects",
            "Missing objects",
            ("Tenant", "Missing objects"),
            tuple((k, v.missing_objects) for k, v in report.by_tenant.items() if v.missing_objects),
            f"{counted(report.missing_objects, 'replayed event')} found the object gone.",
        ),
        Table(
            "score-shifts",
            "Score shifts (replayed minus original)",
            ("Count", "Mean", "Min", "Max"),
            ((summary.count, summary.mean, summary.min, summary.max),),
        ),
        Table(
            "score-shift-histogram",
            "Score-shift histogram",
            ("Shift", "Events"),
            tuple(histogram_rows(summary)),
            "Bins of 0.1 include their lower end; a shift of exactly 0 is counted apart.",
        ),
        Table(
            "changed-events",
            "Changed events",
            _CHANGED_COLUMNS,
            tuple(_changed_row(p) for p in shown),
            f"The first {len(shown)} of {len(changed)}, by event id; changed.jsonl lists all.",
        ),
    ]


def histogram_rows(summary: ScoreSummary) -> list[tuple[str, int]]:
    """The non-empty histogram bins as (label, events), low to high, with the shifts of exactly 0
    in a row of their own: inside the bin from 0 to 0.1 they would read as small rises."""
    rows = []
    last = len(summary.counts) - 1
    for i, count in enumerate(summary.counts):
        low, high = summary.edges[i], summary.edges[i + 1]
        if low == 0:
            if summary.unchanged:
                rows.append(("0 (no change)", summary.unchanged))
            count -= summary.unchanged
            label = f"above 0, under {num(high)}"
        elif i == last:
            label = f"{num(low)} to {num(high)}"  # the last bin is closed: 1 is in it
        else:
            label = f"{num(low)} to under {num(high)}"
        if count:
            rows.append((label, count))
    return rows


def _groups(table_id: str, title: str, label: str, groups: dict[str, GroupCounts]) -> Table:
    return Table(
        table_id,
        title,
        (label, "Events", "Changed", "Missing objects", "No original"),
        tuple(
            (k, v.events, v.changed, v.missing_objects, v.no_original) for k, v in groups.items()
        ),
    )


def _changed_row(pair: Pair) -> tuple[Cell, ...]:
    old = pair.original
    return (
        pair.event_id,
        pair.tenant,
        pair.surface,
        pair.key,
        old.decision if old else None,
        pair.replayed.decision,
        pair.category,
        old.score if old else None,
        pair.replayed.score,
        old.policy_version if old else None,
        pair.replayed.policy_version,
        pair.path,
    )


def _text(value: Any) -> str:
    """A header value as words: yes/no for a flag, `none` for an empty list or mapping."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        pairs = sorted(value.items(), key=lambda kv: str(kv[0]))
        return ", ".join(f"{k}={v}" for k, v in pairs) or "none"
    return str(value) or "none"
