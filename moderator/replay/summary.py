"""The end of a replay run: its verdicts joined with the originals, the report written and shown.

Each replayed event appears once (the verdicts are keyed by event id, so a verdict written twice
by an at-least-once run counts once), whichever process of a resumed run replayed it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from moderator.replay.compare import Pair, pair_of
from moderator.replay.originals import Originals
from moderator.replay.plan import RunPlan
from moderator.replay.render import summary_table, write_report
from moderator.replay.report import Report, build_report

# The live side's engine or model when no original verdict names one (all missing or errors).
UNKNOWN = "unknown: no original verdict names one"


def run_header(plan: RunPlan, originals: Originals, **more: Any) -> dict[str, Any]:
    """What report.json's `header` and the report pages say about the run itself."""
    filt = plan.event_filter
    header: dict[str, Any] = {
        "range": plan.range_text,
        "lookup": plan.lookup,
        "uploads_topic": plan.uploads_topic,
        "output_topic": plan.output_topic,
        "offsets": {str(r.partition): [r.start, r.end] for r in plan.ranges},
        "tenants": sorted(filt.tenants) or "all",
        "sample": filt.sample,
        "rate": plan.rate,
        "policies": plan.policies_dir,
        "engine": plan.engine,
        "model": plan.model,
        "reuse_assessments": plan.reuse_assessments,
        "originals": originals.source,
        "created_at": plan.created_at,
        "finished_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    header.update(more)
    return header


def write_summary(
    plan: RunPlan,
    results: Mapping[str, Mapping[str, Any]],
    originals: Originals,
    directory: Path,
    *,
    header: dict[str, Any],
    out: TextIO | None = None,
) -> Report:
    """Join, count, write the report files into `directory` and print the summary table (to
    stdout unless `out` is given; looked up when called, so a replaced stdout is honoured)."""
    out = out if out is not None else sys.stdout
    pairs = [pair_of(originals.get(event_id), results[event_id]) for event_id in sorted(results)]
    report = build_report(pairs, run_id=plan.run_id, header={**header, **live_side(pairs)})
    write_report(report, [p for p in pairs if p.changed], directory)
    print(summary_table(report), file=out)
    print(f"report: {directory / 'report.html'}", file=out)
    return report


def live_side(pairs: Iterable[Pair]) -> dict[str, str]:
    """The header's `live_engine` and `live_model`: what judged the original verdicts, as those
    verdicts name it (the live service's flags may differ from the settings a replay reads)."""
    engines: set[str] = set()
    models: set[str] = set()
    for pair in pairs:
        model = pair.original.model if pair.original is not None else None
        if model:
            engine, _, name = model.partition(":")  # "engine:name@revision"
            engines.add(engine)
            models.add(name)
    return {
        "live_engine": ", ".join(sorted(engines)) or UNKNOWN,
        "live_model": ", ".join(sorted(models)) or UNKNOWN,
    }
