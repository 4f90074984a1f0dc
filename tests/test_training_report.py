"""The evaluation report directory from the fixture dataset and predictions, and comparisons.

tests/fixtures/eval holds a 36-sample dataset (originals, policy-augmented samples, two policy
names) and a predictions file with raw model outputs, scores and two unparseable answers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from moderator.training.dataset import Sample, read_dataset
from moderator.training.metrics import Prediction, compute
from moderator.training.predictions import read_predictions
from moderator.training.report import (
    ReportError,
    compare,
    compare_markdown,
    compare_table,
    write_compare,
    write_report,
)
from moderator.training.report_charts import category_figure
from moderator.training.report_compare import RULE, compare_metrics
from moderator.training.report_render import header_items

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The keys the command line's users depend on (the interface) and the rest compute() adds.
INTERFACE_KEYS = (
    *("balanced_accuracy", "accuracy", "precision", "recall", "specificity", "f1", "f2"),
    *("category_accuracy", "policy_exception_rate", "pes", "unparseable", "n", "per_category"),
)
ALL_KEYS = {
    *INTERFACE_KEYS,
    *("unsafe", "safe", "errors", "missing", "confusion", "tp", "fp", "tn", "fn"),
    *("category_accuracy_unsafe", "policy_exceptions", "per_augmentation", "default_policy"),
    *("elapsed_s", "samples_per_second", "scored", "roc_auc", "pr_auc", "brier"),
    *("calibration", "thresholds", "header"),
}
GROUP_KEYS = {
    *("n", "unsafe", "safe", "unparseable", "errors", "missing", "confusion"),
    *("tp", "fp", "tn", "fn"),
    *("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "f2"),
    *("category_accuracy", "category_accuracy_unsafe"),
}
HEADER = {"dataset": "tests/fixtures/eval/dataset.jsonl", "engine": "fixture", "model": "m1"}
CHARTS = ("confusion.png", "per_category.png", "roc_pr.png", "calibration.png")


@pytest.fixture(scope="module")
def data() -> tuple[list[Sample], list[Prediction]]:
    return read_dataset(FIXTURES / "dataset.jsonl"), read_predictions(
        FIXTURES / "predictions.jsonl"
    )


def _write(directory: Path, samples: list[Sample], predictions: list[Prediction]) -> dict[str, Any]:
    metrics = compute(samples, predictions, elapsed_s=3.0)
    write_report(directory, metrics, samples, predictions, HEADER)
    return metrics


def test_metrics_json_has_every_key(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    pytest.importorskip("matplotlib", reason="the plots need the replay extra")
    _write(tmp_path, *data)
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    document = json.loads(text)
    assert set(document) == ALL_KEYS
    assert text == json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    for key in INTERFACE_KEYS:
        assert document[key] is not None, key
    assert (document["n"], document["unparseable"], document["policy_exceptions"]) == (36, 2, 7)
    assert set(document["default_policy"]) == GROUP_KEYS
    assert all(set(m) == GROUP_KEYS for m in document["per_category"].values())
    assert len(document["per_category"]) == 10  # O1..O9 and NA
    assert document["header"] == HEADER
    assert document["scored"] == 35 and 0.0 <= document["roc_auc"] <= 1.0
    assert [r["level"] for r in document["thresholds"]["all"]["rows"]] == [0.8, 0.9, 0.95, 0.99]


def test_every_file_is_written(tmp_path: Path, data: tuple[list[Sample], list[Prediction]]) -> None:
    pytest.importorskip("matplotlib", reason="the plots need the replay extra")
    samples, predictions = data
    metrics = _write(tmp_path, samples, predictions)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"metrics.json", "report.md", "report.html", "misclassified.jsonl", *CHARTS}
    for chart in CHARTS:
        png = (tmp_path / chart).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000, chart

    lines = (tmp_path / "misclassified.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    wrong_rating = metrics["fp"] + metrics["fn"]
    assert sum(r["error"] in ("rating", "unparseable", "missing") for r in records) == wrong_rating
    assert {r["error"] for r in records} == {"rating", "unparseable", "category"}
    by_id = {r["id"]: r for r in records}
    assert by_id["o5-safe"]["error"] == "unparseable"
    assert by_id["o5-safe"]["output"] == "I cannot assess this image."

    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    for title in ("Summary", "Confusion matrix", "Per category", "Subsets", "Calibration"):
        assert f"\n## {title}\n" in md
    for chart in CHARTS:
        assert f"]({chart})" in md
    assert "```yaml\n# block_at: precision >= 0.9" in md

    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert not re.search(r"(?:src|href)=\"(?!data:)", html), "only data: URIs may be referenced"
    assert "Content-Security-Policy" in html
    for chart_id in ("confusion-chart", "per-category-chart", "roc-pr-chart", "calibration-chart"):
        assert f'id="{chart_id}" ' in html and "data:image/png;base64," in html


def test_without_scores_the_score_parts_are_left_out(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    pytest.importorskip("matplotlib", reason="the plots need the replay extra")
    samples, predictions = data
    _write(tmp_path, samples, predictions)
    unscored = [dataclasses.replace(p, score=None) for p in predictions]
    metrics = _write(tmp_path, samples, unscored)
    assert metrics["scored"] == 0 and metrics["thresholds"] is None
    assert not (tmp_path / "roc_pr.png").exists()  # the earlier report's plot is removed
    assert not (tmp_path / "calibration.png").exists()
    assert (tmp_path / "confusion.png").exists()
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="no-scores"' in html and 'id="thresholds"' not in html


def test_without_matplotlib_the_report_says_so(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    _write(tmp_path, *data)
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count('class="note no-charts"') == 4 and "<img" not in html
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md.count("Plots need matplotlib") == 4


def test_a_reused_directory_keeps_no_file_of_the_earlier_report(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    samples, predictions = data
    metrics = compute(samples, predictions)
    for name in ("predictions.jsonl", "compare.md", "notes.txt"):
        (tmp_path / name).write_text("an earlier run\n")
    write_report(tmp_path, metrics, samples, predictions, HEADER, kept=["predictions.jsonl"])
    assert (tmp_path / "predictions.jsonl").is_file()  # this report's, written by the caller
    assert not (tmp_path / "compare.md").exists()  # compared the earlier report
    assert (tmp_path / "notes.txt").is_file()  # not a report file: left alone
    write_report(tmp_path, metrics, samples, predictions, HEADER)  # scored from a file
    assert not (tmp_path / "predictions.jsonl").exists()


def test_data_is_escaped(tmp_path: Path) -> None:
    sample = Sample(
        id="<b>x</b>", image="i.png", rating="Unsafe", category="O1: Hate, Humiliation, Harassment"
    )
    prediction = Prediction(
        "<b>x</b>", "Safe", "NA: None applying", None, "<script>alert(1)</script>"
    )
    metrics = compute([sample], [prediction])
    write_report(tmp_path, metrics, [sample], [prediction], {"model": "<img src=x>"})
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<img src=x>" not in html
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "<b>" not in md and "<img" not in md


# -- comparing ---------------------------------------------------------------------------------


def test_compare_two_report_directories(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    samples, predictions = data
    _write(tmp_path / "a", samples, predictions)
    # B answers one more Unsafe sample right: recall and balanced accuracy rise.
    truth = {s.id: s for s in samples}
    fixed_one = next(
        p for p in predictions if truth[p.id].rating == "Unsafe" and p.rating == "Safe"
    )
    better = [
        dataclasses.replace(p, rating="Unsafe", category=truth[p.id].category)
        if p is fixed_one
        else p
        for p in predictions
    ]
    _write(tmp_path / "b", samples, better)
    result = compare(tmp_path / "a", tmp_path / "b")
    verdict = result["verdict"]
    assert verdict["better"] == "b" and verdict["decided_by"] == "balanced_accuracy"
    assert verdict["reason"].startswith("B is better: balanced accuracy ")
    rows = {r["key"]: r for r in result["metrics"]}
    assert rows["recall"]["delta"] == pytest.approx(1 / 16)  # 16 Unsafe samples in the fixture
    assert rows["unparseable"]["better"] == "same" and rows["n"]["better"] is None
    assert result["warnings"] == []
    json.dumps(result, allow_nan=False)

    path = write_compare(tmp_path / "cmp", result)
    assert path.name == "compare.md"
    text = path.read_text(encoding="utf-8")
    assert text == compare_markdown(result)
    assert "**Verdict**: B is better" in text and "| Balanced accuracy |" in text
    table = compare_table(result)
    assert table.splitlines()[0].split() == ["Metric", "A", "B", "Delta", "(B", "-", "A)", "Better"]
    assert "B is better" in table
    long_floats = re.compile(r"\d\.\d{4,}")  # metrics are shown to 3 decimals, JSON keeps all
    assert not long_floats.search(text) and not long_floats.search(table)
    assert any(len(str(r["a"])) > 6 for r in result["metrics"] if isinstance(r["a"], float))

    same = compare(tmp_path / "a", tmp_path / "a" / "metrics.json")
    assert same["verdict"]["better"] == "tie" and same["verdict"]["decided_by"] is None


def _doc(**values: Any) -> dict[str, Any]:
    return {"n": 100, "per_category": {}, **values}


@pytest.mark.parametrize(
    ("a", "b", "better", "decided_by"),
    [
        (_doc(balanced_accuracy=0.80), _doc(balanced_accuracy=0.85), "b", "balanced_accuracy"),
        (_doc(balanced_accuracy=0.90), _doc(balanced_accuracy=0.85), "a", "balanced_accuracy"),
        # Within the tolerance, recall decides; then PES; then fewer unparseable answers.
        (
            _doc(balanced_accuracy=0.8, recall=0.7),
            _doc(balanced_accuracy=0.8004, recall=0.75),
            "b",
            "recall",
        ),
        (
            _doc(balanced_accuracy=0.8, recall=0.7, pes=0.6),
            _doc(balanced_accuracy=0.8, recall=0.7, pes=0.5),
            "a",
            "pes",
        ),
        (
            _doc(balanced_accuracy=0.8, unparseable=3),
            _doc(balanced_accuracy=0.8, unparseable=1),
            "b",
            "unparseable",
        ),
        (
            _doc(balanced_accuracy=0.8, unparseable=2),
            _doc(balanced_accuracy=0.8, unparseable=2),
            "tie",
            None,
        ),
        # A metric missing from either side is skipped.
        (
            _doc(balanced_accuracy=None, recall=0.5),
            _doc(balanced_accuracy=0.9, recall=0.6),
            "b",
            "recall",
        ),
    ],
)
def test_the_verdict_rule(
    a: dict[str, Any], b: dict[str, Any], better: str, decided_by: str | None
) -> None:
    verdict = compare_metrics(a, b)["verdict"]
    assert (verdict["better"], verdict["decided_by"]) == (better, decided_by)
    assert verdict["rule"] == RULE


def test_compare_warns_about_different_data() -> None:
    a = _doc(balanced_accuracy=0.8, header={"dataset": "one.jsonl"})
    b = {**_doc(balanced_accuracy=0.9, header={"dataset": "two.jsonl"}), "n": 90}
    warnings = compare_metrics(a, b)["warnings"]
    assert len(warnings) == 2 and "one.jsonl" in warnings[0] and "100 vs 90" in warnings[1]


def test_compare_names_a_missing_report(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"A: no metrics\.json"):
        compare(tmp_path / "nothing", tmp_path)
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {"n": 1, "balanced_accuracy": 1.0, "recall": 1.0, "pes": None, "unparseable": 0}
        ),
        encoding="utf-8",
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text("{", encoding="utf-8")
    with pytest.raises(ReportError, match=r"B: .*not valid JSON"):
        compare(tmp_path / "metrics.json", tmp_path / "b")
    (tmp_path / "b" / "metrics.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(ReportError, match=r"B: .*not a metrics document"):
        compare(tmp_path, tmp_path / "b")


# -- what a reader sees first --------------------------------------------------------------------

SMOKE_HEADER = {
    **HEADER,
    "engine": "transformers",
    "model": "./tiny",
    "smoke_test": True,
    "errors": {},
}


def test_the_header_reads_as_words_not_python(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    samples, predictions = data
    header = {**SMOKE_HEADER, "errors": {"engine_error": 2, "corrupt_image": 1}}
    assert dict(header_items(header)) == {
        "dataset": HEADER["dataset"],
        "engine": "transformers",
        "errors": "engine_error 2, corrupt_image 1",
        "model": "./tiny",
        "smoke test": "yes",
    }
    assert dict(header_items({"errors": {}, "smoke_test": False})) == {
        "errors": "none",
        "smoke test": "no",
    }
    metrics = compute(samples, predictions)
    write_report(tmp_path, metrics, samples, predictions, SMOKE_HEADER)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- **errors**: none\n" in md and "- **smoke test**: yes\n" in md
    top = md.split("## Summary")[0]
    assert "{}" not in top and "True" not in top


def test_a_smoke_test_report_says_so_before_any_number(
    tmp_path: Path, data: tuple[list[Sample], list[Prediction]]
) -> None:
    samples, predictions = data
    metrics = compute(samples, predictions)
    write_report(tmp_path, metrics, samples, predictions, SMOKE_HEADER)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    warning = "> **Warning**: a smoke-test model (transformers: ./tiny) answered"
    assert warning in md and md.index(warning) < md.index("## Summary")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<p class="warning" id="smoke-test">Warning: a smoke-test model' in html
    assert html.index('id="smoke-test"') < html.index("<h2>Summary</h2>")
    write_report(tmp_path, metrics, samples, predictions, HEADER)
    assert "smoke-test model" not in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert 'id="smoke-test"' not in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_compare_warns_about_a_smoke_test_report() -> None:
    a = _doc(balanced_accuracy=0.8, header={"smoke_test": True, "model": "./tiny"})
    b = _doc(balanced_accuracy=0.9, header={"smoke_test": False, "model": "big"})
    assert compare_metrics(a, b)["warnings"] == [
        "A was answered by a smoke-test model (./tiny): its metrics are not meaningful."
    ]
    assert compare_metrics(b, b)["warnings"] == []


def test_the_per_category_legend_covers_no_bar(data: tuple[list[Sample], list[Prediction]]) -> None:
    """The legend used to sit inside the plot, over the last category's bars and values."""
    pytest.importorskip("matplotlib", reason="the plots need the replay extra")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = category_figure(compute(*data))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    [axes] = figure.axes
    legends = [*figure.legends, *([axes.get_legend()] if axes.get_legend() else [])]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert not box.overlaps(axes.get_window_extent(renderer))


def test_compare_goes_by_the_dataset_s_contents_not_its_path() -> None:
    one, two = "a" * 64, "b" * 64
    here = _doc(header={"dataset": "data/test.json", "dataset_sha256": one})
    there = _doc(header={"dataset": "/abs/data/test.json", "dataset_sha256": one})
    assert compare_metrics(here, there)["warnings"] == []  # one file, two paths
    rebuilt = _doc(header={"dataset": "data/test.json", "dataset_sha256": two})
    assert compare_metrics(here, rebuilt)["warnings"] == [
        "The reports were made on different dataset contents (data/test.json sha256 "
        "aaaaaaaaaaaa vs data/test.json sha256 bbbbbbbbbbbb)."
    ]
