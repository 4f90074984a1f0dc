"""The replay report's scores and score shifts as people read them: every score as recorded
(a rounded score next to a threshold reads as another number), and a shift of exactly 0 in a
row of its own rather than in the bin that reads as a small rise."""

from __future__ import annotations

from pathlib import Path

from moderator.replay.charts import shifted_counts
from moderator.replay.compare import pair_of
from moderator.replay.render import write_report
from moderator.replay.report import build_report, summarize_shifts
from moderator.replay.tables import cell_text, histogram_rows, report_tables
from tests.test_replay_report import HEADER, RUN, old, verdict


def _pairs() -> list:
    """e1 changes (0.3496 -> 0.4054), e2 keeps its score, e3 rises by 0.05."""
    return [
        pair_of(
            old("e1", "acme", "default", "allow", "v1", category="O4", score=0.3496),
            verdict("e1", "acme", "default", "review", "v2", category="O4", score=0.4054),
        ),
        pair_of(
            old("e2", "acme", "default", "allow", "v1", category="O4", score=0.3944),
            verdict("e2", "acme", "default", "allow", "v2", category="O4", score=0.3944),
        ),
        pair_of(
            old("e3", "acme", "default", "allow", "v1", category="O4", score=0.1),
            verdict("e3", "acme", "default", "allow", "v2", category="O4", score=0.15),
        ),
    ]


def test_a_score_is_shown_as_recorded() -> None:
    assert [cell_text(v) for v in (0.3496, 0.4054, 0.5, 1.0, 0.116667)] == [
        "0.3496",
        "0.4054",
        "0.5",
        "1",
        "0.116667",
    ]


def test_report_md_and_html_show_the_recorded_scores(tmp_path: Path) -> None:
    pairs = _pairs()
    write_report(build_report(pairs, run_id=RUN, header=HEADER), pairs, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "| 0.3496 | 0.4054 |" in md
    assert '<td class="n">0.3496</td><td class="n">0.4054</td>' in page
    for rounded in ("0.350", "0.405"):
        assert f"| {rounded} |" not in md and f">{rounded}<" not in page
    # The shift statistics too: mean, min and max as computed (rounded to 6 places), not to 3.
    assert "| 3 | 0.035267 | 0 | 0.0558 |" in md


def test_a_shift_of_zero_has_its_own_row() -> None:
    summary = summarize_shifts([-0.05, 0.0, 0.0, 0.05, 0.1, 1.0])
    assert summary.unchanged == 2
    assert summary.to_json()["unchanged"] == 2
    assert sum(summary.counts) == 6  # report.json's histogram still counts every shift
    assert histogram_rows(summary) == [
        ("-0.1 to under 0", 1),
        ("0 (no change)", 2),
        ("above 0, under 0.1", 1),
        ("0.1 to under 0.2", 1),
        ("0.9 to 1", 1),
    ]
    assert sum(shifted_counts(summary)) == 4  # the chart draws the zeros as a bar of their own


def test_no_zero_row_without_zero_shifts() -> None:
    assert histogram_rows(summarize_shifts([0.05])) == [("above 0, under 0.1", 1)]
    assert histogram_rows(summarize_shifts([0.0])) == [("0 (no change)", 1)]
    assert histogram_rows(summarize_shifts([])) == []


def test_the_histogram_table_in_the_report(tmp_path: Path) -> None:
    pairs = _pairs()
    report = build_report(pairs, run_id=RUN, header=HEADER)
    table = {t.id: t for t in report_tables(report, [])}["score-shift-histogram"]
    assert table.columns == ("Shift", "Events")
    assert table.rows == (("0 (no change)", 1), ("above 0, under 0.1", 2))
    write_report(report, pairs, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| 0 (no change) | 1 |" in md and "0.000" not in md
