"""Replay reports: counts against hand-computed expectations, the JSON contract, the files."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.events.verdict import CATEGORIES, Verdict
from moderator.replay import render
from moderator.replay.compare import Pair, outcome_of, pair_of
from moderator.replay.render import FILES, summary_table, write_report
from moderator.replay.report import BINS, build_report, summarize_shifts
from moderator.replay.tables import CHANGED_SHOWN

RUN = "run-7"
HOSTILE_KEY = "uploads/<script>alert(1)</script>.jpg"
HEADER = {
    "range": "2026-11-01T00:00:00Z..2026-11-02T00:00:00Z",
    "policies": "/srv/policies-next",
    "engine": "guard",
    "policy_diff": ["acme/default: O4 action: review -> block", "beta/default: prompt changed"],
    "started": "2026-12-01T10:00:00Z",
    "finished": "2026-12-01T10:05:00Z",
}
_FULL = {c.split(":", 1)[0]: c for c in CATEGORIES}


def verdict(
    event_id: str,
    tenant: str,
    surface: str,
    decision: str,
    version: str,
    *,
    category: str | None = None,
    score: float | None = None,
    error: str | None = None,
    key: str | None = None,
    path: str | None = None,
    revision: str = "r2",
) -> dict[str, Any]:
    """A Verdict v1 dict as published (validated by the model, dumped as JSON)."""
    assessment = None
    if category is not None:
        rating = "Safe" if category == "NA" else "Unsafe"
        assessment = {"rating": rating, "category": _FULL[category], "score": score}
    document = {
        "event_id": event_id,
        "tenant_id": tenant,
        "object": {"bucket": f"{tenant}-uploads", "key": key or f"img/{event_id}.jpg"},
        "decision": decision,
        "assessment": assessment,
        "policy": {"tenant_id": tenant, "surface": surface, "version": version},
        "model": None
        if error == "object_not_found"
        else {"engine": "guard", "name": "llama-guard", "revision": revision},
        "replay": None
        if path is None
        else {"run_id": RUN, "original_decision": None, "path": path},
        "error": None if error is None else {"code": error, "message": "test"},
        "decided_at": datetime(2026, 12, 1, tzinfo=UTC),
        "trace_id": "0" * 32,
    }
    return Verdict.model_validate(document).model_dump(mode="json", by_alias=True)


def old(event_id: str, tenant: str, surface: str, decision: str, version: str, **kw: Any) -> Any:
    return verdict(event_id, tenant, surface, decision, version, revision="r1", **kw)


def crafted() -> list[Pair]:
    """Ten events: two tenants, three tenant/surfaces, every kind of pair."""
    n = "object_not_found"
    return [
        pair_of(
            old("e01", "acme", "default", "allow", "v1", category="NA", score=0.1),
            verdict(
                "e01", "acme", "default", "allow", "v2", category="NA", score=0.2, path="cache"
            ),
        ),
        pair_of(
            old("e02", "acme", "default", "allow", "v1", category="NA", score=0.3),
            verdict(
                "e02", "acme", "default", "block", "v2", category="O4", score=0.9, path="engine"
            ),
        ),
        pair_of(
            old("e03", "acme", "avatar", "review", "a1", category="O3", score=0.5),
            verdict(
                "e03", "acme", "avatar", "block", "a2", category="O3", score=0.8, path="engine"
            ),
        ),
        pair_of(
            old("e04", "acme", "avatar", "block", "a1", category="O4", score=0.95),
            verdict(
                "e04", "acme", "avatar", "block", "a2", category="O4", score=0.95, path="assessment"
            ),
        ),
        pair_of(
            old("e05", "beta", "default", "block", "b1", category="O1", score=0.9),
            verdict(
                "e05", "beta", "default", "allow", "b2", category="NA", score=0.1, path="engine"
            ),
        ),
        pair_of(  # an engine error on replay: a change, filed under the original's category
            old("e06", "beta", "default", "allow", "b0", category="NA"),
            verdict("e06", "beta", "default", "review", "b2", error="engine_error", path="error"),
        ),
        pair_of(  # the object is gone: missing, never a change
            old("e07", "beta", "default", "allow", "b1", category="NA", score=0.2),
            verdict("e07", "beta", "default", "review", "b2", error=n, path="error"),
        ),
        pair_of(  # no original verdict
            None,
            verdict(
                "e08", "acme", "default", "block", "v2", category="O5", score=0.7, path="engine"
            ),
        ),
        pair_of(None, verdict("e09", "beta", "default", "review", "b2", error=n, path="error")),
        pair_of(
            old(
                "e10", "acme", "default", "allow", "v1", category="NA", score=0.05, key=HOSTILE_KEY
            ),
            verdict(
                "e10", "acme", "default", "review", "v2", category="O2", score=0.55, key=HOSTILE_KEY
            ),
        ),
    ]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def pairs() -> list[Pair]:
    return crafted()


def test_totals_and_transitions(pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    assert (report.events, report.changed) == (10, 5)
    assert (report.missing_objects, report.no_original) == (2, 1)
    assert report.transitions == {
        "allow->allow": 1,
        "allow->block": 1,
        "allow->review": 2,
        "block->allow": 1,
        "block->block": 1,
        "review->block": 1,
    }
    assert report.paths == {"assessment": 1, "cache": 1, "engine": 5, "error": 3}
    assert report.errors == {"engine_error": 1, "object_not_found": 2}


def test_by_tenant_and_surface(pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    acme, beta = report.by_tenant["acme"], report.by_tenant["beta"]
    assert list(report.by_tenant) == ["acme", "beta"]
    assert (acme.events, acme.changed, acme.missing_objects, acme.no_original) == (6, 3, 0, 1)
    assert acme.transitions == {
        "allow->allow": 1,
        "allow->block": 1,
        "allow->review": 1,
        "block->block": 1,
        "review->block": 1,
    }
    assert (beta.events, beta.changed, beta.missing_objects, beta.no_original) == (4, 2, 2, 0)
    assert beta.transitions == {"allow->review": 1, "block->allow": 1}
    default, avatar = report.by_surface["default"], report.by_surface["avatar"]
    assert (default.events, default.changed, default.missing_objects) == (8, 4, 2)
    assert default.transitions == {
        "allow->allow": 1,
        "allow->block": 1,
        "allow->review": 2,
        "block->allow": 1,
    }
    assert (avatar.events, avatar.changed, avatar.transitions) == (
        2,
        1,
        {"block->block": 1, "review->block": 1},
    )


def test_by_category_prefers_the_replayed_category(pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    assert report.by_category == {
        "NA": {"events": 4, "changed": 2},  # e06 and e07 take the original's category
        "O2": {"events": 1, "changed": 1},
        "O3": {"events": 1, "changed": 1},
        "O4": {"events": 2, "changed": 1},
        "O5": {"events": 1, "changed": 0},
        "none": {"events": 1, "changed": 0},  # e09: no assessment on either side
    }


def test_score_shifts_and_summary(pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    assert report.score_shifts == (0.1, 0.6, 0.3, 0.0, -0.8, 0.5)
    summary = report.score_summary
    assert (summary.count, summary.mean, summary.min, summary.max) == (6, 0.116667, -0.8, 0.6)
    assert len(summary.edges) == BINS + 1 and summary.edges[0] == -1.0 and summary.edges[-1] == 1.0
    assert {i: n for i, n in enumerate(summary.counts) if n} == {
        2: 1,
        10: 1,
        11: 1,
        13: 1,
        15: 1,
        16: 1,
    }


def test_histogram_edges_are_exact() -> None:
    # Float sums that land just beside an edge still count in the bin the edge opens.
    summary = summarize_shifts([-1.0, -0.9, 0.7 - 0.6, 0.3 - 0.1, 0.999, 1.0])
    assert {i: n for i, n in enumerate(summary.counts) if n} == {0: 1, 1: 1, 11: 1, 12: 1, 19: 2}
    empty = summarize_shifts([])
    assert (empty.count, empty.mean, empty.min, empty.max, sum(empty.counts)) == (0, *[None] * 3, 0)


def test_policy_versions_and_models(pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    assert report.policy_versions == {
        "acme/avatar": {"old": ["a1"], "new": ["a2"]},
        "acme/default": {"old": ["v1"], "new": ["v2"]},
        "beta/default": {"old": ["b0", "b1"], "new": ["b2"]},
    }
    assert report.models == {"new": ["guard:llama-guard@r2"], "old": ["guard:llama-guard@r1"]}


def test_pair_kinds(pairs: list[Pair]) -> None:
    by_id = {p.event_id: p for p in pairs}
    assert by_id["e07"].kind == "missing_object" and not by_id["e07"].changed
    assert by_id["e09"].kind == "missing_object"  # missing wins over no original
    assert by_id["e08"].kind == "no_original" and by_id["e08"].transition is None
    assert by_id["e02"].transition == "allow->block" and by_id["e02"].changed
    assert by_id["e10"].path == "engine"  # no replay info: judged by the engine


def test_outcome_of() -> None:
    outcome = outcome_of(verdict("e", "t", "default", "block", "v9", category="O4", score=0.5))
    assert (outcome.decision, outcome.category, outcome.score) == ("block", "O4", 0.5)
    assert (outcome.policy_version, outcome.error, outcome.model) == (
        "v9",
        None,
        "guard:llama-guard@r2",
    )
    bare = verdict("e", "t", "default", "allow", "v9", category="NA")
    bare["model"]["revision"] = None
    assert outcome_of(bare).model == "guard:llama-guard"
    with pytest.raises(ValueError, match="'e1' is not a Verdict v1"):
        outcome_of({"event_id": "e1", "decision": "allow"})


def test_json_keys_contract_and_order(pairs: list[Pair]) -> None:
    document = build_report(pairs, run_id=RUN, header=HEADER).to_json()
    contract = {"run_id", "events", "changed", "transitions", "by_tenant", "by_category"}
    assert contract | {"missing_objects", "policy_versions"} <= set(document)
    assert json.dumps(document) == json.dumps(document, sort_keys=True)
    assert document["run_id"] == RUN and document["events"] == 10 and document["changed"] == 5
    assert document["by_tenant"]["beta"] == {
        "changed": 2,
        "events": 4,
        "missing_objects": 2,
        "no_original": 0,
        "transitions": {"allow->review": 1, "block->allow": 1},
    }
    assert document["score_shifts"]["count"] == 6
    assert document["header"]["policy_diff"] == HEADER["policy_diff"]
    again = build_report(reversed(crafted()), run_id=RUN, header=HEADER).to_json()
    assert json.dumps(again) == json.dumps(document)


def test_write_report_files(tmp_path: Path, pairs: list[Pair]) -> None:
    report = build_report(pairs, run_id=RUN, header=HEADER)
    written = write_report(report, pairs, tmp_path / "out")
    assert [p.name for p in written] == list(FILES)
    assert names(tmp_path / "out") == sorted(FILES)  # no temporary file left
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert on_disk == report.to_json()


def test_changed_jsonl_content_and_order(tmp_path: Path, pairs: list[Pair]) -> None:
    write_report(build_report(pairs, run_id=RUN, header=HEADER), reversed(pairs), tmp_path)
    lines = (tmp_path / "changed.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event_id"] for r in records] == ["e02", "e03", "e05", "e06", "e10"]
    assert records[0] == {
        "category": "O4",
        "event_id": "e02",
        "key": "img/e02.jpg",
        "new_decision": "block",
        "new_error": None,
        "new_model": "guard:llama-guard@r2",
        "new_policy_version": "v2",
        "new_score": 0.9,
        "old_decision": "allow",
        "old_error": None,
        "old_model": "guard:llama-guard@r1",
        "old_policy_version": "v1",
        "old_score": 0.3,
        "path": "engine",
        "surface": "default",
        "tenant": "acme",
    }
    assert records[3]["new_error"] == "engine_error" and records[3]["category"] == "NA"
    assert records[4]["key"] == HOSTILE_KEY


def test_markdown_names_versions_and_diff(tmp_path: Path, pairs: list[Pair]) -> None:
    write_report(build_report(pairs, run_id=RUN, header=HEADER), pairs, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| acme/default | v1 | v2 |" in md
    assert "| beta/default | b0, b1 | b2 |" in md
    for line in HEADER["policy_diff"]:
        assert f"\n{line}\n" in md
    assert "| allow | review | 2 |" in md
    assert "| beta | 4 | 2 | 2 | 0 |" in md
    assert "/srv/policies-next" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "The first 5 of 5, by event id" in md


def test_html_escapes_data_and_is_self_contained(tmp_path: Path, pairs: list[Pair]) -> None:
    header = {**HEADER, "policy_diff": ["<img src=x onerror=alert(1)>"]}
    write_report(build_report(pairs, run_id="<b>run</b>", header=header), pairs, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page and "<b>run" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert not re.search(r"https?://|(src|href)=\"(?!data:)", page)
    for chart in ("transitions-chart", "score-shift-chart"):
        match = re.search(rf'<img id="{chart}" [^>]*src="data:image/png;base64,([^"]+)"', page)
        assert match is not None
        png = base64.b64decode(match.group(1))
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024
    assert '<table id="transitions">' in page
    assert '<td>allow</td><td>review</td><td class="n">2</td>' in page


def test_html_without_matplotlib(
    tmp_path: Path, pairs: list[Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    write_report(build_report(pairs, run_id=RUN, header=HEADER), pairs, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<img" not in page and 'id="no-charts"' in page and "moderator[replay]" in page
    assert '<table id="transitions">' in page


def test_a_failed_write_keeps_the_previous_report(
    tmp_path: Path, pairs: list[Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_report(pairs[:3], run_id="first", header={})
    write_report(first, pairs[:3], tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    calls = 0

    def failing_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_report(build_report(pairs, run_id=RUN, header=HEADER), pairs, tmp_path)
    assert names(tmp_path) == sorted(FILES)
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before

    def broken(*_: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.undo()
    monkeypatch.setattr(render, "render_html", broken)
    with pytest.raises(RuntimeError):
        write_report(build_report(pairs, run_id=RUN, header=HEADER), pairs, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in names(tmp_path)} == before


def test_changed_events_listed_are_capped(tmp_path: Path) -> None:
    many = [
        pair_of(
            old(f"e{i:03}", "acme", "default", "allow", "v1"),
            verdict(f"e{i:03}", "acme", "default", "block", "v2"),
        )
        for i in range(CHANGED_SHOWN + 10)
    ]
    write_report(build_report(many, run_id=RUN, header={}), many, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"The first {CHANGED_SHOWN} of {CHANGED_SHOWN + 10}" in md
    assert "| e049 |" in md and "| e050 |" not in md
    assert "No policy difference was given." in md
    jsonl = (tmp_path / "changed.jsonl").read_text(encoding="utf-8")
    assert len(jsonl.splitlines()) == CHANGED_SHOWN + 10


def test_summary_table(pairs: list[Pair]) -> None:
    text = summary_table(build_report(pairs, run_id=RUN, header=HEADER))
    lines = text.splitlines()
    assert lines[0] == "replay run-7: 10 events, 5 changed, 2 missing objects, 1 without original"
    assert re.search(r"^allow->review\s+2$", text, re.MULTILINE)
    assert re.search(r"^beta\s+4\s+2\s+2\s+0$", text, re.MULTILINE)
    # the transitions add up to fewer than the events: the table says why
    assert "(7 of 10 compared: missing objects and events without an original" in text
    # another model judged the replay: said on the terminal, not only in the report's header
    assert "model: guard:llama-guard@r1 -> guard:llama-guard@r2: decisions may change" in text
    empty = summary_table(build_report([], run_id="none", header={}))
    assert "transition: none" in empty and "tenant: none" in empty
    assert "compared" not in empty and "model:" not in empty
    same_model = [
        dataclasses.replace(p, replayed=dataclasses.replace(p.replayed, model=p.original.model))
        for p in pairs
        if p.original is not None and p.transition is not None
    ]
    plain = summary_table(build_report(same_model, run_id=RUN, header=HEADER))
    assert "compared" not in plain and "model:" not in plain
