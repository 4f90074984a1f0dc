"""report.md and report.html of an evaluation: the same tables, plots and policy snippets.

report.md links the PNG files beside it; report.html is self-contained: inline CSS, the plots as
PNG data URIs, no script, and a Content-Security-Policy that allows nothing else. Every text
that came from data is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from moderator.replay.html import html_table
from moderator.replay.markdown import inline as _inline
from moderator.replay.markdown import table_lines
from moderator.replay.tables import Table
from moderator.training.report_charts import CHART_FILES, NO_CHARTS
from moderator.training.report_tables import policy_snippets

TITLE = "Evaluation report"
NO_SCORES = (
    "No prediction has a score, so there is no ROC-AUC, PR-AUC, calibration or threshold table: "
    "they need the engine's P(Unsafe)."
)
SMOKE_TEST = (
    "a smoke-test model ({model}) answered: random weights or a stand-in, so these numbers say "
    "nothing about any real model. Use this report to check the tooling only."
)
SNIPPETS_NOTE = (
    "Per-rule thresholds as a tenant policy's entries (docs/policies.md), one block per level. "
    "Check the sample counts in the table above before trusting a rule's values."
)
# A plot goes above the table it draws.
CHART_BEFORE = {
    "confusion": "confusion.png",
    "per-category": "per_category.png",
    "calibration": "calibration.png",
    "thresholds": "roc_pr.png",
}

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
p.note { color: #555; }
p.warning { background: #fff3cd; border: 1px solid #e0b252; padding: .6em .8em; }
figure { margin: .5em 0; } img { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def header_items(header: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run header as (label, text), in key order: yes/no for a flag, `code n, ...` (or
    `none`) for counts by key."""
    return [(key.replace("_", " "), _header_text(header[key])) for key in sorted(header)]


def _header_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def smoke_test_warning(header: Mapping[str, Any]) -> str | None:
    """The warning a report of a smoke-test model opens with, or None."""
    if not header.get("smoke_test"):
        return None
    model = ": ".join(str(header[k]) for k in ("engine", "model") if header.get(k))
    if not model and header.get("predictions"):
        model = f"the answers in {header['predictions']}"
    return SMOKE_TEST.format(model=model or "unnamed")


def render_markdown(
    header: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tables: Sequence[Table],
    charts: Mapping[str, bytes] | None,
) -> str:
    """The whole report.md; `charts` names the PNG files written beside it (None: no matplotlib)."""
    lines = [f"# {TITLE}", ""]
    lines += [f"- **{_inline(k)}**: {_inline(v)}" for k, v in header_items(header)]
    warning = smoke_test_warning(header)
    if warning is not None:
        lines += ["", f"> **Warning**: {_inline(warning)}"]
    if not metrics.get("scored"):
        lines += ["", NO_SCORES]
    for table in tables:
        lines += ["", f"## {table.title}", ""]
        lines += _md_chart(CHART_BEFORE.get(table.id), charts)
        lines += _md_table(table)
        if table.id == "thresholds":
            lines += ["", "## Policy snippets", "", SNIPPETS_NOTE]
            for _, yaml in policy_snippets(metrics):
                lines += ["", "```yaml", yaml, "```"]
    return "\n".join(lines) + "\n"


def render_html(
    header: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tables: Sequence[Table],
    charts: Mapping[str, bytes] | None,
) -> str:
    """The whole report.html, plots embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{escape(TITLE)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(TITLE)}</h1>",
        '<dl id="header">',
        *(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in header_items(header)),
        "</dl>",
    ]
    warning = smoke_test_warning(header)
    if warning is not None:
        parts.append(f'<p class="warning" id="smoke-test">Warning: {escape(warning)}</p>')
    if not metrics.get("scored"):
        parts.append(f'<p class="note" id="no-scores">{escape(NO_SCORES)}</p>')
    for table in tables:
        parts.append(f"<h2>{escape(table.title)}</h2>")
        parts += _html_chart(CHART_BEFORE.get(table.id), charts)
        parts += html_table(table)
        if table.id == "thresholds":
            parts += ["<h2>Policy snippets</h2>", f'<p class="note">{escape(SNIPPETS_NOTE)}</p>']
            parts += [
                f'<pre class="snippet">{escape(yaml)}</pre>' for _, yaml in policy_snippets(metrics)
            ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def chart_id(name: str) -> str:
    """The img element id of a plot file: confusion.png -> confusion-chart."""
    return name.removesuffix(".png").replace("_", "-") + "-chart"


def _md_chart(name: str | None, charts: Mapping[str, bytes] | None) -> list[str]:
    if name is None:
        return []
    if charts is None:
        return [NO_CHARTS, ""]
    if name not in charts:
        return []
    return [f"![{CHART_FILES[name]}]({name})", ""]


def _html_chart(name: str | None, charts: Mapping[str, bytes] | None) -> list[str]:
    if name is None:
        return []
    if charts is None:
        return [f'<p class="note no-charts">{escape(NO_CHARTS)}</p>']
    if name not in charts:
        return []
    data = base64.b64encode(charts[name]).decode("ascii")
    return [
        f'<figure><img id="{chart_id(name)}" alt="{escape(CHART_FILES[name])}" '
        f'src="data:image/png;base64,{data}"></figure>'
    ]


def _md_table(table: Table) -> list[str]:
    lines = [_inline(table.note), ""] if table.note else []
    return lines + table_lines(table)
