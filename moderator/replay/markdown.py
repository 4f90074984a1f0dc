"""report.md: the run header, the policy diff and the report's tables as Markdown."""

from __future__ import annotations

import re
from collections.abc import Sequence

from moderator.replay.compare import Pair
from moderator.replay.report import Report
from moderator.replay.tables import Table, cell_text, header_items, policy_diff, report_tables


def render_markdown(report: Report, changed: Sequence[Pair]) -> str:
    """The whole report.md; `changed` is the run's changed pairs sorted by event id."""
    lines = [f"# Replay report {inline(report.run_id)}", ""]
    lines += [f"- **{inline(label)}**: {inline(value)}" for label, value in header_items(report)]
    lines += ["", "## Policy diff", ""]
    diff = policy_diff(report)
    if diff:
        fence = _fence(diff)
        lines += [f"{fence}text", *diff, fence]
    else:
        lines.append("No policy difference was given.")
    for table in report_tables(report, changed):
        lines += ["", *_table(table)]
    return "\n".join(lines) + "\n"


def _table(table: Table) -> list[str]:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [inline(table.note), ""]
    return lines + table_lines(table)


def table_lines(table: Table) -> list[str]:
    """A Table's columns and rows as a Markdown table (numbers right-aligned), or "None."."""
    if not table.rows:
        return ["None."]
    lines = ["| " + " | ".join(inline(c) for c in table.columns) + " |"]
    aligns = ("---:" if _numeric(table, i) else "---" for i in range(len(table.columns)))
    lines.append("|" + "|".join(aligns) + "|")
    lines += ["| " + " | ".join(inline(cell_text(c)) for c in row) + " |" for row in table.rows]
    return lines


def _numeric(table: Table, column: int) -> bool:
    values = [row[column] for row in table.rows if row[column] is not None]
    return bool(values) and all(isinstance(v, int | float) for v in values)


def inline(text: str) -> str:
    """Data as literal Markdown text: no table breaks, no emphasis, no raw HTML from a key."""
    text = " ".join(text.splitlines())
    text = re.sub(r"([\\`*_|\[\]])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _fence(lines: Sequence[str]) -> str:
    """A code fence longer than any run of backticks in `lines`, so none can close it early."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)
