"""The run header of a replay report: what it says about the live side, and how it reads.

The live engine and model are what the original verdicts name (the live service may have run
with flags the replay's settings do not show); its values read as words, not Python.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from moderator.replay.compare import pair_of
from moderator.replay.originals import TopicOriginals
from moderator.replay.plan import RunPlan
from moderator.replay.render import summary_table
from moderator.replay.report import build_report
from moderator.replay.request import EventFilter, OffsetRange
from moderator.replay.summary import UNKNOWN, live_side, run_header, write_summary
from moderator.replay.tables import header_items, report_tables
from moderator.words import counted
from tests.test_replay_report import old, verdict

PLAN = RunPlan(
    run_id="r1",
    created_at="2026-12-05T23:15:00Z",
    uploads_topic="uploads",
    output_topic="moderation.replay",
    ranges=(OffsetRange(0, 0, 2),),
    event_filter=EventFilter(),
    range_text="the whole topic",
    lookup="whole topic",
    policies_dir="/srv/policies-next",
    engine="nudenet",
    model=None,
)


def fake_original(event_id: str) -> dict[str, Any]:
    """An original verdict of a live service that ran with `--engine fake`."""
    document = old(event_id, "kids", "default", "allow", "v1", category="NA", score=0.1)
    document["model"] = {"engine": "fake", "name": "fake", "revision": None}
    return document


def replayed(event_id: str) -> dict[str, Any]:
    return verdict(
        event_id, "kids", "default", "allow", "v2", category="NA", score=0.1, path="engine"
    )


def test_the_live_engine_and_model_are_the_originals(tmp_path: Path) -> None:
    """Not the settings' default engine (`nudenet`, no model) that the replay's config shows."""
    originals = TopicOriginals({"e1": fake_original("e1")}, "moderation.verdicts")
    header = run_header(PLAN, originals, live_policies="/srv/policies", resumed_from={})
    out = io.StringIO()
    results = {"e1": replayed("e1"), "e2": replayed("e2")}  # e2 has no original
    write_summary(PLAN, results, originals, tmp_path, header=header, out=out)
    written = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["header"]
    assert (written["live_engine"], written["live_model"]) == ("fake", "fake")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- **live engine**: fake\n" in md and "- **live model**: fake\n" in md
    assert "- **resumed from**: none\n" in md
    assert "- **reuse assessments**: no\n" in md


def test_several_or_no_live_engines() -> None:
    guard = old("e1", "acme", "default", "allow", "v1", category="NA", score=0.1)
    fake = fake_original("e2")
    pairs = [pair_of(guard, replayed("e1")), pair_of(fake, replayed("e2"))]
    assert live_side(pairs) == {"live_engine": "fake, guard", "live_model": "fake, llama-guard@r1"}
    assert live_side([pair_of(None, replayed("e3"))]) == {
        "live_engine": UNKNOWN,
        "live_model": UNKNOWN,
    }


def test_the_header_reads_as_words() -> None:
    header = {
        "reuse_assessments": False,
        "dropped_outputs": {},
        "resumed_from": {},
        "tenants": [],
        "range": "",
        "rate": None,
        "offsets": {"0": [0, 8]},
    }
    shown = dict(header_items(build_report([], run_id="r1", header=header)))
    assert shown == {
        "run": "r1",
        "dropped outputs": "none",
        "offsets": "0=[0, 8]",
        "range": "none",
        "rate": "-",
        "resumed from": "none",
        "reuse assessments": "no",
        "tenants": "none",
    }
    yes = dict(header_items(build_report([], run_id="r1", header={"reuse_assessments": True})))
    assert yes["reuse assessments"] == "yes"


def test_counts_are_singular_or_plural() -> None:
    assert [counted(n, "partition") for n in (0, 1, 2)] == [
        "0 partitions",
        "1 partition",
        "2 partitions",
    ]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == (
        "3 entries"
    )
    gone = verdict("e1", "kids", "default", "review", "v2", error="object_not_found", path="error")
    report = build_report([pair_of(None, gone)], run_id="r1", header={})
    assert summary_table(report).splitlines()[0] == (
        "replay r1: 1 event, 0 changed, 1 missing object, 0 without original"
    )
    missing = next(t for t in report_tables(report, []) if t.id == "missing-objects")
    assert missing.note == "1 replayed event found the object gone."
