"""An evaluation report laid out once as titled tables, for report.md and report.html alike.

Pure: the metrics dict (moderator.training.metrics.compute) and the joined outcomes in, `Table`s,
misclassified records and policy snippets out. Cells hold raw values; each writer escapes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from moderator.replay.tables import Cell, Table
from moderator.training.metrics import NONE_APPLYING_RULE, PREDICTED_COLUMNS, Outcome

MISCLASSIFIED_SHOWN = 50  # rows in the reports' table; misclassified.jsonl has every one

# (key, label) of the summary table, in order; a key with a dot reads a nested value.
SUMMARY = (
    ("n", "Samples"),
    ("unsafe", "Unsafe samples"),
    ("safe", "Safe samples"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("accuracy", "Accuracy"),
    ("precision", "Precision (Unsafe)"),
    ("recall", "Recall (Unsafe)"),
    ("specificity", "Specificity (Safe)"),
    ("f1", "F1"),
    ("f2", "F2"),
    ("category_accuracy", "Category accuracy"),
    ("category_accuracy_unsafe", "Category accuracy on Unsafe samples"),
    ("policy_exceptions", "Policy-exception samples"),
    ("policy_exception_rate", "Policy exception rate"),
    ("pes", "PES"),
    ("unparseable", "Unparseable answers"),
    ("errors", "Failed requests (no answer)"),
    ("missing", "Samples without a prediction"),
    ("samples_per_second", "Samples per second"),
    ("scored", "Samples with a score"),
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
    ("brier", "Brier score"),
    ("calibration.ece", "Expected calibration error"),
)
_SUBSET_COLUMNS = (
    *("Subset", "Samples", "Unsafe", "Balanced accuracy", "Accuracy", "Recall"),
    *("Specificity", "Category accuracy", "Unparseable"),
)


def lookup(metrics: Mapping[str, Any], key: str) -> Any:
    """A value by dotted key (`calibration.ece`); None where a step is missing or null."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def report_tables(metrics: Mapping[str, Any], outcomes: Sequence[Outcome]) -> list[Table]:
    """Every table of the report, in reading order."""
    tables = [
        summary_table(metrics),
        confusion_table(metrics),
        per_category_table(metrics),
        subsets_table(metrics),
    ]
    if metrics.get("calibration"):
        tables.append(calibration_table(metrics))
    if metrics.get("thresholds"):
        tables.append(thresholds_table(metrics))
    tables.append(misclassified_table(outcomes))
    return tables


def summary_table(metrics: Mapping[str, Any]) -> Table:
    rows = tuple((label, _cell(lookup(metrics, key))) for key, label in SUMMARY)
    note = (
        "Unsafe is the positive class; unparseable answers, failed requests and missing "
        "predictions count as wrong."
    )
    return Table("summary", "Summary", ("Metric", "Value"), rows, note)


def confusion_table(metrics: Mapping[str, Any]) -> Table:
    matrix = metrics.get("confusion") or {}
    rows = tuple(
        (truth, *(int((matrix.get(truth) or {}).get(c, 0)) for c in PREDICTED_COLUMNS))
        for truth in ("Safe", "Unsafe")
    )
    columns = (
        *("True rating", "Predicted Safe", "Predicted Unsafe", "Unparseable"),
        *("Failed request", "No prediction"),
    )
    return Table("confusion", "Confusion matrix", columns, rows)


def per_category_table(metrics: Mapping[str, Any]) -> Table:
    columns = (
        *("Category", "Samples", "Unsafe", "Safe", "Balanced accuracy", "Recall"),
        *("Specificity", "Precision", "Category accuracy", "Unparseable"),
    )
    rows = tuple(
        (
            category,
            *(
                _cell(m.get(k))
                for k in (
                    *("n", "unsafe", "safe", "balanced_accuracy", "recall"),
                    *("specificity", "precision", "category_accuracy", "unparseable"),
                )
            ),
        )
        for category, m in sorted((metrics.get("per_category") or {}).items())
    )
    note = (
        "Grouped by the true category. Recall is measured on its Unsafe samples, specificity "
        "on its Safe ones."
    )
    return Table("per-category", "Per category", columns, rows, note)


def subsets_table(metrics: Mapping[str, Any]) -> Table:
    groups: list[tuple[str, Mapping[str, Any]]] = [("all samples", metrics)]
    groups.append(("default policy", metrics.get("default_policy") or {}))
    groups += [
        (f"augmented: {rule}", m)
        for rule, m in sorted((metrics.get("per_augmentation") or {}).items())
    ]
    rows = tuple(
        (
            name,
            *(
                _cell(m.get(k))
                for k in (
                    *("n", "unsafe", "balanced_accuracy", "accuracy", "recall"),
                    *("specificity", "category_accuracy", "unparseable"),
                )
            ),
        )
        for name, m in groups
    )
    note = (
        "The default-policy subset: original samples judged under the default policy. "
        f"Policy exception rate: {_text(metrics.get('policy_exception_rate'))} on "
        f"{_text(metrics.get('policy_exceptions'))} policy-exception samples."
    )
    return Table("subsets", "Subsets", _SUBSET_COLUMNS, rows, note)


def calibration_table(metrics: Mapping[str, Any]) -> Table:
    bins = (metrics.get("calibration") or {}).get("bins") or []
    rows = tuple(
        (
            f"{b['lower']:.2f}-{b['upper']:.2f}",
            int(b["count"]),
            _cell(b.get("mean_score")),
            _cell(b.get("fraction_unsafe")),
        )
        for b in bins
    )
    note = "A calibrated score has each bin's fraction of Unsafe samples close to its mean score."
    return Table(
        "calibration",
        "Calibration",
        ("Score bin", "Samples", "Mean score", "Fraction Unsafe"),
        rows,
        note,
    )


def thresholds_table(metrics: Mapping[str, Any]) -> Table:
    thresholds = metrics.get("thresholds") or {}
    groups = [("all", thresholds.get("all") or {})]
    groups += sorted((thresholds.get("per_rule") or {}).items())
    rows: list[tuple[Cell, ...]] = []
    for rule, group in groups:
        for row in group.get("rows") or []:
            rows.append(
                (
                    rule,
                    _cell(group.get("n")),
                    _cell(group.get("unsafe")),
                    _cell(row["level"]),
                    _threshold(row["block_at"]),
                    _cell(row["block_precision"]),
                    _cell(row["block_recall"]),
                    _threshold(row["review_at"]),
                    _cell(row["review_precision"]),
                    _cell(row["review_recall"]),
                )
            )
    columns = (
        *("Rule", "Scored", "Unsafe", "Level", "block_at", "Precision", "Recall"),
        *("review_at", "Precision", "Recall"),
    )
    note = (
        "block_at: the lowest score threshold whose precision reaches the level; review_at: the "
        "highest whose recall reaches it. A rule's rows use the samples whose answer named its "
        "category (NA: none_applying). '-': no threshold reaches the level."
    )
    return Table("thresholds", "Thresholds", columns, tuple(rows), note)


def misclassified_table(outcomes: Sequence[Outcome]) -> Table:
    wrong = [o for o in outcomes if error_kind(o) is not None]
    rows = tuple(
        (
            o.sample.id,
            f"{o.sample.rating} / {o.sample.category}",
            _predicted(o),
            o.score,
            error_kind(o),
            o.sample.augmented,
        )
        for o in wrong[:MISCLASSIFIED_SHOWN]
    )
    shown = (
        f"the first {MISCLASSIFIED_SHOWN} of {len(wrong)}"
        if len(wrong) > MISCLASSIFIED_SHOWN
        else f"all {len(wrong)}"
    )
    note = f"Samples with a wrong rating or category: {shown} (misclassified.jsonl has every one)."
    columns = ("Id", "Expected", "Predicted", "Score", "Error", "Augmented")
    return Table("misclassified", "Misclassified samples", columns, rows, note)


def error_kind(outcome: Outcome) -> str | None:
    """Why an outcome is wrong ("missing", "failed", "unparseable", "rating", "category"), or
    None."""
    if outcome.prediction is None:
        return "missing"
    if outcome.prediction.failed:
        return "failed"
    if outcome.prediction.rating is None:
        return "unparseable"
    if not outcome.rating_correct:
        return "rating"
    if not outcome.category_correct:
        return "category"
    return None


def misclassified_record(outcome: Outcome) -> dict[str, Any]:
    """One line of misclassified.jsonl; a failed request's error code and message in
    `error_code` and `error_message` (null otherwise)."""
    p = outcome.prediction
    s = outcome.sample
    return {
        "id": s.id,
        "error": error_kind(outcome),
        "error_code": p.error if p else None,
        "error_message": p.error_message if p and p.failed else None,
        "expected_rating": s.rating,
        "expected_category": s.category,
        "predicted_rating": p.rating if p else None,
        "predicted_category": p.category if p else None,
        "score": p.score if p else None,
        "output": p.output if p else None,
        "augmented": s.augmented,
        "policy": s.policy,
        "image": getattr(s, "image", None),
    }


def policy_snippets(metrics: Mapping[str, Any]) -> list[tuple[float, str]]:
    """(level, YAML) per level: the per-rule thresholds as a tenant policy's `categories` and
    `none_applying` entries, ready to paste. A `review_at` above `block_at` is lowered to it
    (a policy may not set it higher); a rule with neither value is left out."""
    thresholds = metrics.get("thresholds") or {}
    per_rule: Mapping[str, Any] = thresholds.get("per_rule") or {}
    snippets = []
    for index, level in enumerate(thresholds.get("levels") or []):
        categories: list[str] = []
        none_applying: list[str] = []
        for rule, group in sorted(per_rule.items()):
            row = group["rows"][index]
            values = _rule_values(row["block_at"], row["review_at"])
            if not values:
                continue
            if rule == NONE_APPLYING_RULE:
                none_applying.append(f"none_applying: {{{values}}}")
            else:
                categories.append(f"  {rule}: {{{values}}}")
        lines = [
            f"# block_at: precision >= {level}; review_at: recall >= {level} "
            f"({_text(metrics.get('scored'))} scored samples)"
        ]
        if categories:
            lines += ["categories:", *categories]
        lines += none_applying
        if len(lines) == 1:
            lines.append("# no rule reaches this level")
        snippets.append((float(level), "\n".join(lines)))
    return snippets


def _rule_values(block_at: float | None, review_at: float | None) -> str:
    if block_at is not None and review_at is not None:
        review_at = min(review_at, block_at)
    parts = []
    if block_at is not None:
        parts.append(f"block_at: {_threshold(block_at)}")
    if review_at is not None:
        parts.append(f"review_at: {_threshold(review_at)}")
    return ", ".join(parts)


def _predicted(outcome: Outcome) -> str:
    p = outcome.prediction
    if p is None:
        return "(no prediction)"
    if p.error is not None:
        return f"(failed: {p.error})"
    if p.rating is None:
        return "(unparseable)"
    return f"{p.rating} / {p.category or '-'}"


def _threshold(value: float | None) -> str | None:
    """A threshold written in full (repr), as a policy file takes it; rounding could cross a
    score and change what it catches."""
    return None if value is None else repr(float(value))


def _cell(value: Any) -> Cell:
    if isinstance(value, float):
        return shown_metric(value)
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    return str(value)


def shown_metric(value: float) -> float:
    """A metric as a table shows it: 3 decimals (0.333, 206.378), or 2 significant digits for
    a value that 3 decimals would show as 0 (0.00042). metrics.json keeps every digit."""
    rounded = round(value, 3)
    return rounded if rounded or not value else float(f"{value:.2g}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
