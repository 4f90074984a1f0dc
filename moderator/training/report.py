"""Writing an evaluation report directory, and comparing two of them (docs/evaluation.md).

`write_report` renders every file in memory, then writes each beside its target and renames it
into place (moderator.replay.render.write_atomically): a crash leaves the previous report or the
new one, never half a file. The files:

- `metrics.json`: the metrics (moderator.training.metrics.compute) with the run's `header`,
  keys sorted;
- `report.md`, `report.html` (self-contained: plots inline, no script, no external URL);
- `confusion.png`, `per_category.png`, and with scores `roc_pr.png`, `calibration.png`
  (matplotlib, from the `replay` extra; without it no PNG is written and the reports say so);
- `misclassified.jsonl`: one line per sample whose rating or category is wrong, in dataset order.

An earlier report's files that the new one does not write are removed (REPORT_FILES), so that
a directory never mixes two runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.replay.render import write_atomically
from moderator.training.metrics import Prediction, SampleLike, join
from moderator.training.report_charts import CHART_FILES, draw_charts
from moderator.training.report_compare import (
    compare_metrics,
    render_markdown,
    render_text,
    report_problem,
)
from moderator.training.report_render import render_html
from moderator.training.report_render import render_markdown as render_report_markdown
from moderator.training.report_tables import error_kind, misclassified_record, report_tables

METRICS_FILE = "metrics.json"
COMPARE_FILE = "compare.md"
TEXT_FILES = ("metrics.json", "report.md", "report.html", "misclassified.jsonl")
PREDICTIONS_FILE = "predictions.jsonl"  # an engine run's raw outputs, written by the caller
REPORT_FILES = (*TEXT_FILES, *CHART_FILES, PREDICTIONS_FILE, COMPARE_FILE)
"""Every file a report directory may hold: write_report's, the caller's predictions and a
comparison written into it. What a new report does not write (or keep) is removed."""


class ReportError(ConfigError):
    """A report directory that cannot be read for a comparison (exit 2)."""


def write_report(
    directory: Path,
    metrics: Mapping[str, Any],
    samples: Iterable[SampleLike],
    predictions: Iterable[Prediction],
    header: Mapping[str, Any],
    *,
    kept: Iterable[str] = (),
) -> list[Path]:
    """Write the report files into `directory` (created if needed); return the paths written.

    `metrics` is compute()'s result for the same samples and predictions; `header` describes
    the run (dataset, engine, model, predictions file...) and is shown at the top and stored
    under `header` in metrics.json. Every other file of REPORT_FILES an earlier report left
    there is removed (a plot this one has none for, predictions.jsonl of an engine run,
    compare.md), except those named in `kept`: the ones the caller wrote for this report.
    """
    outcomes = join(samples, predictions)
    tables = report_tables(metrics, outcomes)
    charts = draw_charts(metrics, outcomes)
    document = {**metrics, "header": dict(header)}
    files = {
        "metrics.json": (_json(document, indent=2) + "\n").encode(),
        "misclassified.jsonl": "".join(
            _json(misclassified_record(o)) + "\n" for o in outcomes if error_kind(o) is not None
        ).encode(),
        "report.md": render_report_markdown(header, metrics, tables, charts).encode(),
        "report.html": render_html(header, metrics, tables, charts).encode(),
        **(charts or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    written = write_atomically(directory, files)
    stale = set(REPORT_FILES) - set(files) - set(kept)
    for name in sorted(stale):
        (directory / name).unlink(missing_ok=True)
    return written


def compare(report_a_dir: Path, report_b_dir: Path) -> dict[str, Any]:
    """Compare report B against report A (B - A): per-metric and per-category deltas, a verdict
    with its rule, and warnings when the reports cover different data. JSON-ready.

    Each argument is a report directory (or its metrics.json). ReportError when one cannot be read.
    """
    a = read_metrics(report_a_dir, "A")
    b = read_metrics(report_b_dir, "B")
    result = compare_metrics(a, b)
    result["sources"] = [str(report_a_dir), str(report_b_dir)]
    return result


def compare_markdown(result: Mapping[str, Any]) -> str:
    """compare.md's text for a compare() result."""
    sources = result.get("sources") or ["A", "B"]
    return render_markdown(result, (str(sources[0]), str(sources[1])))


def compare_table(result: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table with the verdict, for a terminal."""
    return render_text(result)


def write_compare(directory: Path, result: Mapping[str, Any]) -> Path:
    """Write compare.md into `directory` (created if needed); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    [path] = write_atomically(directory, {COMPARE_FILE: compare_markdown(result).encode()})
    return path


def read_metrics(path: Path, name: str = "report") -> dict[str, Any]:
    """A report's metrics.json as a dict; `path` is the report directory or the file itself."""
    file = path / METRICS_FILE if path.is_dir() else path
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"{name}: no {METRICS_FILE} at {path} "
            "(give a directory that `moderator eval --report` wrote)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{name}: cannot read {file}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{name}: {file}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(document, dict):
        raise ReportError(f"{name}: {file}: not a metrics document (a JSON object)")
    problem = report_problem(document)
    if problem is not None:
        raise ReportError(
            f"{name}: {file}: not an evaluation report (the metrics.json of `moderator eval "
            f"--report`): {problem}"
        )
    return document


def _json(value: Any, indent: int | None = None) -> str:
    # allow_nan=False: a NaN anywhere is a bug to see, not a value to write. default=str: header
    # values (paths, datetimes) are written as text.
    return json.dumps(
        value, sort_keys=True, indent=indent, ensure_ascii=False, allow_nan=False, default=str
    )
