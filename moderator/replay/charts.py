"""The report's two charts as PNG bytes, drawn with matplotlib's Agg canvas.

matplotlib comes with the `replay` extra and is imported only here, inside the functions:
without it `draw_charts` returns None and report.html shows a note instead of the charts.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
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
        transitions=png(_transition_figure(report.transitions)),
        score_shifts=png(_shift_figure(report.score_summary)),
    )


def transition_matrix(transitions: Mapping[str, int]) -> list[list[int]]:
    """Counts as rows of original decisions by columns of replayed ones (allow, review, block)."""
    return [[transitions.get(f"{old}->{new}", 0) for new in DECISIONS] for old in DECISIONS]


def _transition_figure(transitions: Mapping[str, int]) -> Figure:
    return count_heatmap(
        transition_matrix(transitions),
        DECISIONS,
        DECISIONS,
        xlabel="replayed decision",
        ylabel="original decision",
        title="Decision transitions (events)",
        size=_SIZE,
        bold=lambda i, j: i != j,  # an off-diagonal count is a changed decision
    )


def count_heatmap(
    matrix: Sequence[Sequence[int]],
    columns: Sequence[str],
    rows: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    size: tuple[float, float],
    bold: Callable[[int, int], bool] | None = None,
) -> Figure:
    """A matrix of counts as shaded cells with each count written in it: white on dark cells,
    in bold where `bold(row, column)` holds and the count is not 0."""
    from matplotlib.figure import Figure

    peak = max((n for row in matrix for n in row), default=0)
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(peak, 1))
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if peak and count > peak / 2 else "black",
                fontweight="bold" if bold is not None and bold(i, j) and count else "normal",
            )
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return figure


def _shift_figure(summary: ScoreSummary) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of events
    width = summary.edges[1] - summary.edges[0]
    axes.bar(
        summary.edges[:-1], shifted_counts(summary), width=width, align="edge", color="#4878a8"
    )
    axes.axvline(0.0, color="#444444", linewidth=0.8)
    if summary.unchanged:
        # A bar of its own, centred on 0: in the bin from 0 to 0.1 it would read as small rises.
        axes.bar(
            0.0,
            summary.unchanged,
            width=width / 4,
            color="#999999",
            edgecolor="#444444",
            label=f"no change ({summary.unchanged})",
            zorder=3,
        )
        axes.legend(loc="upper left", frameon=False)
    axes.set_xlim(summary.edges[0], summary.edges[-1])
    axes.set_xlabel("replayed score - original score")
    axes.set_ylabel("events")
    axes.set_title(f"Score shifts (n={summary.count})")
    return figure


def shifted_counts(summary: ScoreSummary) -> list[int]:
    """The histogram's counts without the shifts of exactly 0, which the chart draws apart."""
    return [
        n - summary.unchanged if low == 0 else n
        for low, n in zip(summary.edges[:-1], summary.counts, strict=True)
    ]


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes, the same for the same figure whatever matplotlib drew it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No "Software" entry: the same report gives the same bytes whatever matplotlib wrote it.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
