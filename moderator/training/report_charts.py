"""The evaluation report's plots as PNG bytes, drawn with matplotlib's Agg canvas.

matplotlib comes with the `replay` extra and is imported only inside these functions: without it
`draw_charts` returns None and the report shows a note in the plots' place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from moderator.replay.charts import count_heatmap, png
from moderator.training import curves
from moderator.training.metrics import PREDICTED_COLUMNS, Outcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_CHARTS = "Plots need matplotlib: pip install 'moderator[replay]'."
# File name -> title, in the order the report shows them.
CHART_FILES = {
    "confusion.png": "Confusion matrix",
    "per_category.png": "Per category",
    "roc_pr.png": "ROC and precision-recall curves",
    "calibration.png": "Calibration",
}
_SIZE = (6.0, 4.0)  # inches, at 100 dpi


def draw_charts(metrics: Mapping[str, Any], outcomes: Sequence[Outcome]) -> dict[str, bytes] | None:
    """File name -> PNG for each plot that applies (the score plots need scores), or None when
    matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (fails first, and alone, when the extra is missing)
    except ImportError:
        return None
    charts = {
        "confusion.png": png(_confusion_figure(metrics)),
        "per_category.png": png(category_figure(metrics)),
    }
    scored = [(o.unsafe, o.score) for o in outcomes if o.score is not None]
    if scored and metrics.get("calibration"):
        charts["roc_pr.png"] = png(_curves_figure(scored, metrics))
        charts["calibration.png"] = png(_calibration_figure(metrics["calibration"]))
    return charts


def _confusion_figure(metrics: Mapping[str, Any]) -> Figure:
    table = metrics.get("confusion") or {}
    # The "error" and "missing" columns only when some request failed, some sample had no
    # prediction.
    shown = {"error": metrics.get("errors"), "missing": metrics.get("missing")}
    columns = [c for c in PREDICTED_COLUMNS if shown.get(c, True)]
    truths = ("Safe", "Unsafe")
    matrix = [[int((table.get(t) or {}).get(c, 0)) for c in columns] for t in truths]
    return count_heatmap(
        matrix,
        columns,
        truths,
        xlabel="predicted rating",
        ylabel="true rating",
        title=f"Confusion matrix (n={metrics.get('n', 0)})",
        size=_SIZE,
    )


def category_figure(metrics: Mapping[str, Any]) -> Figure:
    """Recall, specificity and category accuracy per true category, as horizontal bars."""
    from matplotlib.figure import Figure

    per_category: Mapping[str, Mapping[str, Any]] = metrics.get("per_category") or {}
    names = sorted(per_category)
    series = (
        ("recall", "recall (Unsafe)", "#c0504d"),
        ("specificity", "specificity (Safe)", "#4878a8"),
        ("category_accuracy", "category accuracy", "#9bbb59"),
    )
    height = max(3.0, 0.55 * len(names) + 1.5)
    figure = Figure(figsize=(7.0, height), layout="constrained")
    axes = figure.add_subplot()
    bar = 0.8 / len(series)
    for k, (key, label, color) in enumerate(series):
        # A value that does not apply (no Unsafe samples for recall) draws no bar.
        values = [per_category[name].get(key) for name in names]
        positions = [i + (k - 1) * bar for i, v in enumerate(values) if v is not None]
        shown = [v for v in values if v is not None]
        axes.barh(positions, shown, height=bar, color=color, label=label)
        for y, value in zip(positions, shown, strict=True):
            # The value beside each bar, so a zero reads as zero and not as a missing bar.
            axes.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize="x-small")
    axes.set_yticks(range(len(names)), [f"{n} (n={per_category[n].get('n', 0)})" for n in names])
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.1)
    axes.set_xlabel("share of the category's samples")
    axes.set_title("Per true category")
    # Below the plot, never over a bar or its value.
    figure.legend(loc="outside lower center", ncols=len(series), fontsize="small", frameon=False)
    return figure


def _curves_figure(scored: Sequence[curves.Scored], metrics: Mapping[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.2), layout="constrained")
    roc, pr = figure.subplots(1, 2)
    points = curves.roc_points(scored)
    if points:
        roc.plot([p[0] for p in points], [p[1] for p in points], color="#4878a8")
    roc.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=0.8)
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate (recall)")
    roc.set_title(f"ROC (AUC {_number(metrics.get('roc_auc'))})")
    pr_pts = curves.pr_points(scored)
    if pr_pts:
        # Precision holds from the previous recall up to each point, as average precision sums.
        steps = [(0.0, pr_pts[0][1]), *pr_pts]
        pr.step([p[0] for p in steps], [p[1] for p in steps], where="pre", color="#c0504d")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    pr.set_title(f"Precision-recall (AP {_number(metrics.get('pr_auc'))})")
    for axes in (roc, pr):
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)
    return figure


def _calibration_figure(calibration: Mapping[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    bins = [b for b in calibration.get("bins") or [] if b.get("count")]
    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=0.8, label="calibrated")
    axes.plot(
        [b["mean_score"] for b in bins],
        [b["fraction_unsafe"] for b in bins],
        marker="o",
        color="#4878a8",
        label="this model",
    )
    axes.set_xlim(-0.02, 1.02)  # room for the markers of bins at 0 and 1
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("mean score in bin")
    axes.set_ylabel("fraction Unsafe in bin")
    axes.set_title(f"Calibration (ECE {_number(calibration.get('ece'))})")
    axes.legend(loc="upper left", fontsize="small")
    return figure


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
