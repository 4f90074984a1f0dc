"""report.html: the same content as report.md in one self-contained page.

No external URL, no JavaScript: inline CSS, the charts as PNG data URIs, and a
Content-Security-Policy that allows nothing else. Every text that came from data is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from moderator.replay.charts import draw_charts
from moderator.replay.compare import Pair
from moderator.replay.report import Report
from moderator.replay.tables import Table, cell_text, header_items, policy_diff, report_tables

NO_CHARTS = "Charts need matplotlib: pip install 'moderator[replay]'."

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
p.note { color: #555; } figure { margin: .5em 0; } img { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# A chart goes above the table it draws.
_CHART_BEFORE = {"transitions": "transitions-chart", "score-shift-histogram": "score-shift-chart"}


def render_html(report: Report, changed: Sequence[Pair]) -> str:
    """The whole report.html; `changed` is the run's changed pairs sorted by event id."""
    charts = draw_charts(report)
    images = (
        {"transitions-chart": charts.transitions, "score-shift-chart": charts.score_shifts}
        if charts is not None
        else {}
    )
    title = f"Replay report {report.run_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<dl id="header">',
        *(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in header_items(report)),
        "</dl>",
        "<h2>Policy diff</h2>",
    ]
    diff = policy_diff(report)
    parts.append(
        f'<pre id="policy-diff">{escape(chr(10).join(diff))}</pre>'
        if diff
        else '<p class="note" id="policy-diff">No policy difference was given.</p>'
    )
    if charts is None:
        parts.append(f'<p class="note" id="no-charts">{escape(NO_CHARTS)}</p>')
    for table in report_tables(report, changed):
        chart_id = _CHART_BEFORE.get(table.id)
        parts.append(f"<h2>{escape(table.title)}</h2>")
        if chart_id is not None and chart_id in images:
            parts.append(_image(chart_id, table.title, images[chart_id]))
        parts += html_table(table)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _image(element_id: str, title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img id="{element_id}" alt="{escape(title)} chart" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def html_table(table: Table) -> list[str]:
    """A table as HTML lines: numbers right-aligned, a note above it, `None.` when empty."""
    lines = [f'<p class="note">{escape(table.note)}</p>'] if table.note else []
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    lines.append(f'<table id="{escape(table.id)}"><thead><tr>{head}</tr></thead><tbody>')
    for row in table.rows:
        cells = "".join(
            f'<td class="n">{escape(cell_text(c))}</td>'
            if isinstance(c, int | float)
            else f"<td>{escape(cell_text(c))}</td>"
            for c in row
        )
        lines.append(f"<tr>{cells}</tr>")
    if not table.rows:
        lines.append(f'<tr><td colspan="{len(table.columns)}">None.</td></tr>')
    lines.append("</tbody></table>")
    return lines
