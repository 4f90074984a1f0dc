"""The report's two charts as PNG bytes, drawn with matplotlib's Agg canvas.

matplotlib comes with the `replay` extra and is imported only here, inside the functions:
without it `draw_charts` returns None and report.html shows a note instead of the charts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moderator.replay.report import Report, ScoreSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DECISIONS = ("allow", "review", "block")
_SIZE = (5.0, 4.0)  # inches; at 100 dpi a chart is a few tens of KB of PNG


@dataclass(frozen=True)
class Charts:
    transitions: bytes  # PNG: the old -> new decision matrix with counts
    score_shifts: bytes  # PNG: histogram of replayed minus original scores


def draw_charts(report: Report) -> Charts | None:
    """Both charts, or None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (fails first, and alone, when the extra is missing)
    except ImportError:
        return None
    return Charts(
        transitions=_png(_transition_figure(report.transitions)),
        score_shifts=_png(_shift_figure(report.score_summary)),
    )


def transition_matrix(transitions: Mapping[str, int]) -> list[list[int]]:
    """Counts as rows of original decisions by columns of replayed ones (allow, review, block)."""
    return [[transitions.get(f"{old}->{new}", 0) for new in DECISIONS] for old in DECISIONS]


def _transition_figure(transitions: Mapping[str, int]) -> Figure:
    from matplotlib.figure import Figure

    matrix = transition_matrix(transitions)
    peak = max((n for row in matrix for n in row), default=0)
    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(peak, 1))
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            # Dark cells get white text; an off-diagonal count is a changed decision, in bold.
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if peak and count > peak / 2 else "black",
                fontweight="bold" if i != j and count else "normal",
            )
    axes.set_xticks(range(len(DECISIONS)), DECISIONS)
    axes.set_yticks(range(len(DECISIONS)), DECISIONS)
    axes.set_xlabel("replayed decision")
    axes.set_ylabel("original decision")
    axes.set_title("Decision transitions (events)")
    return figure


def _shift_figure(summary: ScoreSummary) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of events
    width = summary.edges[1] - summary.edges[0]
    axes.bar(summary.edges[:-1], summary.counts, width=width, align="edge", color="#4878a8")
    axes.axvline(0.0, color="#444444", linewidth=0.8)
    axes.set_xlim(summary.edges[0], summary.edges[-1])
    axes.set_xlabel("replayed score - original score")
    axes.set_ylabel("events")
    axes.set_title(f"Score shifts (n={summary.count})")
    return figure


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No "Software" entry: the same report gives the same bytes whatever matplotlib wrote it.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
