"""`eval compare` shows rates with three decimals, as the report tables and the docs do
(`0.500`, `1.000`, not `0.5`, `1`); counts stay counts."""

from __future__ import annotations

from moderator.training.report_compare import render_markdown, render_text

RESULT = {
    "names": ["A", "B"],
    "metrics": [
        {"label": "Balanced accuracy", "a": 0.5, "b": 1.0, "delta": 0.5, "better": "b"},
        {"label": "Recall (Unsafe)", "a": 0.0, "b": 0.575, "delta": 0.575, "better": "b"},
        {"label": "Brier score", "a": 0.00042, "b": -0.0, "delta": -0.00042, "better": "b"},
        {"label": "Unparseable answers", "a": 1, "b": 0, "delta": -1, "better": "b"},
    ],
    "per_category": {},
    "verdict": {"reason": "B is better.", "rule": "r"},
    "warnings": [],
}


def test_rates_have_three_decimals_in_the_terminal_table() -> None:
    lines = render_text(RESULT).splitlines()
    assert lines[1].split() == ["Balanced", "accuracy", "0.500", "1.000", "+0.500", "B"]
    assert lines[2].split()[2:4] == ["0.000", "0.575"]
    assert lines[3].split()[2:4] == ["0.00042", "0.000"]
    assert lines[4].split()[2:4] == ["1", "0"]


def test_and_in_compare_md() -> None:
    text = render_markdown(RESULT, ("a", "b"))
    assert "| Balanced accuracy | 0.500 | 1.000 | +0.500 | B |" in text
