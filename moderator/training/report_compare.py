"""Two evaluation reports side by side: per-metric deltas and a plain verdict. Pure.

The verdict rule (docs/evaluation.md, "Comparing two reports"): the report with the higher
balanced accuracy is better; when the two are within TOLERANCE, recall on Unsafe decides, then
PES, then the fewer unparseable answers; when all of these tie, so do the reports. A metric that
either report lacks (null) is skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from moderator.replay.tables import Cell, cell_text
from moderator.training.report_tables import lookup, shown_metric

TOLERANCE = 0.001  # rates closer than this are equal: one tenth of a percentage point
# (key, label, direction): +1 higher is better, -1 lower is better, 0 no better side.
METRICS: tuple[tuple[str, str, int], ...] = (
    ("balanced_accuracy", "Balanced accuracy", 1),
    ("recall", "Recall (Unsafe)", 1),
    ("pes", "PES", 1),
    ("unparseable", "Unparseable answers", -1),
    ("accuracy", "Accuracy", 1),
    ("precision", "Precision (Unsafe)", 1),
    ("specificity", "Specificity (Safe)", 1),
    ("f1", "F1", 1),
    ("f2", "F2", 1),
    ("category_accuracy", "Category accuracy", 1),
    ("category_accuracy_unsafe", "Category accuracy on Unsafe", 1),
    ("policy_exception_rate", "Policy exception rate", 1),
    ("default_policy.balanced_accuracy", "Balanced accuracy, default policy", 1),
    ("roc_auc", "ROC-AUC", 1),
    ("pr_auc", "PR-AUC", 1),
    ("brier", "Brier score", -1),
    ("calibration.ece", "Expected calibration error", -1),
    ("errors", "Failed requests (no answer)", -1),
    ("missing", "Samples without a prediction", -1),
    ("samples_per_second", "Samples per second", 1),
    ("n", "Samples", 0),
    ("policy_exceptions", "Policy-exception samples", 0),
    ("scored", "Samples with a score", 0),
)
DECIDERS = ("balanced_accuracy", "recall", "pes", "unparseable")
CATEGORY_METRICS = ("balanced_accuracy", "recall", "specificity", "category_accuracy")
COUNTS = frozenset({"unparseable", "errors", "missing", "n", "policy_exceptions", "scored"})
REQUIRED = ("n", *DECIDERS)
"""Keys that every metrics.json of `moderator eval --report` has (null where undefined)."""
_SHORT = {
    "balanced_accuracy": "balanced accuracy",
    "recall": "recall on Unsafe",
    "pes": "PES",
    "unparseable": "unparseable answers",
}
RULE = (
    "Higher balanced accuracy wins; within "
    f"{TOLERANCE} of each other, higher recall on Unsafe decides, then higher PES, then fewer "
    "unparseable answers; if all tie, the reports tie."
)


def compare_metrics(
    a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """Compare two metrics.json documents (B against A): per-metric rows, per-category rows, the
    verdict and warnings. JSON-ready."""
    rows = [_row(key, label, direction, a, b) for key, label, direction in METRICS]
    by_key = {r["key"]: r for r in rows}
    decided_by = next(
        (k for k in DECIDERS if by_key[k]["better"] in ("a", "b")),
        None,
    )
    better = by_key[decided_by]["better"] if decided_by else "tie"
    categories: dict[str, list[dict[str, Any]]] = {}
    cats_a = a.get("per_category") or {}
    cats_b = b.get("per_category") or {}
    for category in sorted(set(cats_a) | set(cats_b)):
        categories[category] = [
            _row(
                key,
                key.replace("_", " "),
                1,
                cats_a.get(category) or {},
                cats_b.get(category) or {},
            )
            for key in CATEGORY_METRICS
        ]
    return {
        "names": list(names),
        "metrics": rows,
        "per_category": categories,
        "verdict": {
            "better": better,
            "decided_by": decided_by,
            "reason": _reason(better, decided_by, by_key, names),
            "rule": RULE,
        },
        "warnings": _warnings(a, b),
    }


def report_problem(doc: Mapping[str, Any]) -> str | None:
    """Why a metrics document is not an evaluation report (a required key missing, a metric
    that is not a number or null, a section that is not an object), or None."""
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)}"
    n = doc["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"n: must be a count of samples, got {_value(n)}"
    for section in ("header", "per_category", "default_policy", "calibration"):
        if doc.get(section) is not None and not isinstance(doc[section], Mapping):
            return f"{section}: must be an object, got {_value(doc[section])}"
    problems = [(key, lookup(doc, key)) for key, _, _ in METRICS]
    for category, values in (doc.get("per_category") or {}).items():
        if not isinstance(values, Mapping):
            return f"per_category.{category}: must be an object, got {_value(values)}"
        problems += [(f"per_category.{category}.{k}", values.get(k)) for k in CATEGORY_METRICS]
    for key, value in problems:
        if value is not None and _number(value) is None:
            return f"{key}: must be a number or null, got {_value(value)}"
    return None


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "..."


def _row(
    key: str, label: str, direction: int, a: Mapping[str, Any], b: Mapping[str, Any]
) -> dict[str, Any]:
    value_a, value_b = _number(lookup(a, key)), _number(lookup(b, key))
    delta = value_b - value_a if value_a is not None and value_b is not None else None
    better: str | None = None
    if delta is not None and direction:
        tolerance = 0.5 if key in COUNTS else TOLERANCE
        if abs(delta) < tolerance:
            better = "same"
        elif delta * direction > 0:
            better = "b"
        else:
            better = "a"
    return {
        "key": key,
        "label": label,
        "a": value_a,
        "b": value_b,
        "delta": delta,
        "better": better,
    }


def _reason(
    better: str,
    decided_by: str | None,
    rows: Mapping[str, Mapping[str, Any]],
    names: tuple[str, str],
) -> str:
    compared = [k for k in DECIDERS if rows[k]["delta"] is not None]
    if decided_by is None:
        if not compared:
            return "Tie: no deciding metric is in both reports."
        return f"Tie: {_listed(compared)} are equal within the tolerance."
    row = rows[decided_by]
    winner, loser = ("a", "b") if better == "a" else ("b", "a")
    tied = [k for k in compared if DECIDERS.index(k) < DECIDERS.index(decided_by)]
    lead = f"{_listed(tied)} equal; " if tied else ""
    name = names[0] if better == "a" else names[1]
    return (
        f"{name} is better: {lead}{_SHORT[decided_by]} "
        f"{cell_text(_shown(row[winner]))} vs {cell_text(_shown(row[loser]))}."
    )


def _listed(keys: Sequence[str]) -> str:
    words = [_SHORT[k] for k in keys]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _warnings(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    notes = []
    data_a = lookup(a, "header.dataset")
    data_b = lookup(b, "header.dataset")
    sha_a = lookup(a, "header.dataset_sha256")
    sha_b = lookup(b, "header.dataset_sha256")
    if sha_a is not None and sha_b is not None:
        # The contents decide: the same file under two paths is the same data, and a file
        # rebuilt in place between the two runs is not.
        if sha_a != sha_b:
            notes.append(
                f"The reports were made on different dataset contents ({data_a} "
                f"sha256 {str(sha_a)[:12]} vs {data_b} sha256 {str(sha_b)[:12]})."
            )
    elif data_a is not None and data_b is not None and data_a != data_b:
        notes.append(f"The reports name different datasets ({data_a} vs {data_b}).")
    if a.get("n") != b.get("n"):
        notes.append(
            f"The reports cover different numbers of samples ({a.get('n')} vs {b.get('n')}): "
            "their deltas compare different data."
        )
    for name, report in (("A", a), ("B", b)):
        if lookup(report, "header.smoke_test") is True:
            model = lookup(report, "header.model") or lookup(report, "header.engine")
            if not model and lookup(report, "header.predictions"):
                model = f"the answers in {lookup(report, 'header.predictions')}"
            notes.append(
                f"{name} was answered by a smoke-test model ({model}): its metrics are not "
                "meaningful."
            )
    return notes


def compare_rows(result: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[Cell, ...]]]:
    """The metrics table: columns and rows (metric, A, B, delta B - A, better)."""
    names = result["names"]
    columns = ("Metric", names[0], names[1], "Delta (B - A)", "Better")
    rows: list[tuple[Cell, ...]] = [
        (r["label"], _shown(r["a"]), _shown(r["b"]), _signed(r["delta"]), _side(r["better"], names))
        for r in result["metrics"]
    ]
    return columns, rows


def category_rows(result: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[Cell, ...]]]:
    """The per-category table: balanced accuracy and recall deltas per true category."""
    names = result["names"]
    columns = ("Category", "Metric", names[0], names[1], "Delta (B - A)", "Better")
    rows: list[tuple[Cell, ...]] = []
    for category, metric_rows in result["per_category"].items():
        for r in metric_rows:
            if r["a"] is None and r["b"] is None:
                continue
            rows.append(
                (
                    category,
                    r["label"],
                    _shown(r["a"]),
                    _shown(r["b"]),
                    _signed(r["delta"]),
                    _side(r["better"], names),
                )
            )
    return columns, rows


def render_markdown(result: Mapping[str, Any], sources: tuple[str, str]) -> str:
    """compare.md: sources, verdict, rule, warnings and both tables."""
    names = result["names"]
    verdict = result["verdict"]
    lines = ["# Comparing two evaluation reports", ""]
    lines += [f"- **{names[0]}**: {_md(sources[0])}", f"- **{names[1]}**: {_md(sources[1])}", ""]
    lines += [f"**Verdict**: {_md(verdict['reason'])}", "", f"Rule: {_md(verdict['rule'])}"]
    for warning in result["warnings"]:
        lines += ["", f"Warning: {_md(warning)}"]
    for title, (columns, rows) in (
        ("Metrics", compare_rows(result)),
        ("Per category", category_rows(result)),
    ):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("None.")
            continue
        lines.append("| " + " | ".join(_md(c) for c in columns) + " |")
        lines.append(
            "|"
            + "|".join(
                "---" if i == 0 or i == len(columns) - 1 else "---:" for i in range(len(columns))
            )
            + "|"
        )
        lines += ["| " + " | ".join(_md(cell_text(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_text(result: Mapping[str, Any]) -> str:
    """The metrics table and verdict as plain text for a terminal."""
    columns, rows = compare_rows(result)
    cells = [columns, *[tuple(cell_text(c) for c in row) for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, len(columns) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]
    lines += ["", result["verdict"]["reason"], *result["warnings"]]
    return "\n".join(lines)


def _side(better: str | None, names: Sequence[str]) -> str | None:
    return {"a": names[0], "b": names[1], "same": "same"}.get(better or "")


def _shown(value: Any) -> Any:
    """A rate as the report tables show it, as text with 3 decimals (`0.500`, `1.000`; `0.00042`
    for one 3 decimals would show as 0); a count as it is."""
    if not isinstance(value, float):
        return value
    rounded = shown_metric(value) + 0.0  # -0.0 shows as 0.000
    return f"{rounded:.3f}" if rounded == round(rounded, 3) else str(rounded)


def _signed(delta: float | None) -> str | None:
    if delta is None:
        return None
    return f"{delta:+d}" if isinstance(delta, int) else f"{delta:+.3f}"


def _number(value: Any) -> float | None:
    """A finite JSON number as read (an int stays an int, so counts print as counts), else
    None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _md(text: str) -> str:
    text = " ".join(text.splitlines())
    text = re.sub(r"([\\`*_|\[\]])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")
