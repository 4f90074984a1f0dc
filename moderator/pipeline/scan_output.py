"""How `moderator scan` writes verdicts: JSON Lines (each Verdict v1 document, compact, every
non-ASCII character escaped) or CSV (one row per verdict, the columns below; docs/scan.md).
Standard library and moderator.text only: the parser reads FORMATS without importing the
pipeline.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from moderator.text import csv_cell

FORMATS = ("jsonl", "csv")
"""`scan --format` values; the first is the default."""

CSV_COLUMNS = (
    "object_bucket",
    "object_key",
    "event_id",
    "tenant_id",
    "decision",
    "rating",
    "category",
    "score",
    "error_code",
    "source",
    "policy_version",
    "surface",
    "model_engine",
    "model_name",
    "model_smoke_test",
    "sha256",
    "decided_at",
)
"""The CSV header. Names as in `moderator audit query --format csv` where the two share one."""


class VerdictLines:
    """Verdict documents as lines of one format: `header()` once, then `line(doc)` each."""

    def __init__(self, output_format: str) -> None:
        if output_format not in FORMATS:
            raise ValueError(f"unknown scan output format {output_format!r}")
        self.format = output_format

    def header(self) -> str:
        return _csv_line(CSV_COLUMNS) if self.format == "csv" else ""

    def line(self, doc: Mapping[str, Any]) -> str:
        if self.format == "csv":
            return _csv_line(csv_row(doc))
        return json.dumps(doc, separators=(",", ":")) + "\n"


def csv_row(doc: Mapping[str, Any]) -> list[str]:
    """One Verdict v1 document as the CSV columns' cells ("" for an absent value). Keys, buckets
    and surfaces come from the uploader: text cells are shown as `audit query`'s table shows
    them, and never start a spreadsheet formula (moderator/text.py)."""
    obj = _part(doc, "object")
    assessment = _part(doc, "assessment")
    policy = _part(doc, "policy")
    model = _part(doc, "model")
    error = _part(doc, "error")
    values = {
        "object_bucket": obj.get("bucket"),
        "object_key": obj.get("key"),
        "event_id": doc.get("event_id"),
        "tenant_id": doc.get("tenant_id"),
        "decision": doc.get("decision"),
        "rating": assessment.get("rating"),
        "category": assessment.get("category"),
        "score": assessment.get("score"),
        "error_code": error.get("code"),
        "source": doc.get("source"),
        "policy_version": policy.get("version"),
        "surface": policy.get("surface"),
        "model_engine": model.get("engine"),
        "model_name": model.get("name"),
        "model_smoke_test": model.get("smoke_test"),
        "sha256": obj.get("sha256"),
        "decided_at": doc.get("decided_at"),
    }
    return [csv_cell(values[name]) for name in CSV_COLUMNS]


def _part(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, Mapping) else {}


def _csv_line(cells: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()
