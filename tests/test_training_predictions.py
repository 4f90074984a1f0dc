"""Predictions files (moderator/training/predictions.py) and `moderator eval --predictions`: the
service's parser reads the raw outputs, bad lines are named, and the report written from the
fixture (tests/fixtures/predictions/) has every metric key with hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.engine.base import EngineResult
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import Assessment
from moderator.training.dataset import Sample, read_dataset
from moderator.training.metrics import Prediction
from moderator.training.predictions import (
    match,
    parse_prediction,
    prediction_from_result,
    read_predictions,
    write_predictions,
)
from moderator.training.report import compare_markdown
from tests.policy_fixtures import clear_moderator_env

FIXTURES = Path(__file__).parent / "fixtures" / "predictions"
DATASET = FIXTURES / "dataset.jsonl"
PREDICTIONS = FIXTURES / "predictions.jsonl"
O1 = "O1: Hate, Humiliation, Harassment"
NA = "NA: None applying"
# The keys other tools read from metrics.json (docs/evaluation.md).
INTERFACE_KEYS = (
    "balanced_accuracy",
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "f2",
    "category_accuracy",
    "policy_exception_rate",
    "pes",
    "unparseable",
    "n",
    "per_category",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)


# -- parsing -------------------------------------------------------------------------------------


def test_outputs_are_read_as_the_service_reads_them() -> None:
    by_id = {p.id: p for p in read_predictions(PREDICTIONS)}
    assert [p for p in by_id] == ["a", "b", "c", "d", "e", "f", "g", "h", "i", "zz"]
    assert (by_id["a"].rating, by_id["a"].category, by_id["a"].score) == ("Unsafe", O1, 0.9)
    # Fenced, lower-case rating, category given by its code alone.
    assert (by_id["b"].rating, by_id["b"].category) == ("Unsafe", "O3: Sexual Content")
    # Prose around a Python-style dict with a trailing comma.
    assert (by_id["c"].rating, by_id["c"].category) == ("Safe", NA)
    assert by_id["e"].category == NA  # case-folded
    # Cut off inside the rationale: rating and category are complete, so the verdict stands.
    assert (by_id["f"].rating, by_id["f"].category) == ("Unsafe", "O2: Violence, Harm, or Cruelty")
    # No verdict at all: unparseable, the raw text kept.
    assert by_id["i"] == Prediction("i", None, None, None, "I cannot assess this image.")


def test_an_unparseable_output_keeps_its_score_and_text() -> None:
    prediction = parse_prediction("x", '{"rating": "Maybe"}', 0.5)
    assert prediction == Prediction("x", None, None, 0.5, '{"rating": "Maybe"}')
    assert parse_prediction("y", '{"rating": "Safe", "category": "O10: Spam"}').rating is None


def test_engine_results_become_predictions() -> None:
    answer = Assessment(rating="Unsafe", category=O1, rationale="r", score=0.8)
    ok = EngineResult(assessment=answer, raw_output='{"rating": "Unsafe"...}')
    assert prediction_from_result("a", ok) == Prediction(
        "a", "Unsafe", O1, 0.8, '{"rating": "Unsafe"...}'
    )
    unparseable = EngineResult(
        error_code=ErrorCode.UNPARSEABLE_OUTPUT, error_message="no JSON object", raw_output="hm"
    )
    assert prediction_from_result("b", unparseable) == Prediction("b", None, None, None, "hm")
    failed = EngineResult(error_code=ErrorCode.ENGINE_TIMEOUT, error_message="60 s")
    assert prediction_from_result("c", failed) == Prediction(
        "c", None, None, None, "", error="engine_timeout", error_message="60 s"
    )
    assert prediction_from_result("a", ok, smoke_test=True).smoke_test


def test_written_predictions_read_back_the_same(tmp_path: Path) -> None:
    original = read_predictions(PREDICTIONS)
    path = tmp_path / "p.jsonl"
    write_predictions(path, original)
    assert read_predictions(path) == original
    assert "score" not in json.loads(path.read_text().splitlines()[-1])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes at column 2"),
        ('["a", "b"]', 'not a JSON object (expected {"id": ..., "output": ...})'),
        ('{"output": "x"}', '"id" must be a non-empty string'),
        ('{"id": 7, "output": "x"}', '"id" must be a non-empty string'),
        ('{"id": "a"}', '"output" must be a string (the raw model text)'),
        ('{"id": "a", "output": {"rating": "Safe"}}', '"output" must be a string'),
        ('{"id": "a", "output": "x", "score": "0.5"}', '"score" must be a number between 0 and 1'),
        ('{"id": "a", "output": "x", "score": true}', '"score" must be a number between 0 and 1'),
        ('{"id": "a", "output": "x", "score": 1.5}', '"score" must be between 0 and 1, got 1.5'),
        ('{"id": "a", "output": "x", "score": NaN}', '"score" must be between 0 and 1, got nan'),
    ],
)
def test_a_bad_line_is_named_with_its_number(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "ok", "output": "x"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_predictions(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message
    assert reason in message
    assert "\n" not in message


def test_every_bad_line_is_counted_and_a_repeated_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = ['{"id": "a", "output": "x"}', "oops", '{"id": "a", "output": "y"}', "[]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not JSON: .* \(\+2 more bad lines\)$"):
        read_predictions(path)
    path.write_text(lines[0] + "\n" + lines[2] + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:2: id 'a' already on line 1$"):
        read_predictions(path)


def test_an_empty_or_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no predictions"):
        read_predictions(empty)
    with pytest.raises(ConfigError, match="no such file"):
        read_predictions(tmp_path / "nope.jsonl")


def test_matching_reports_unknown_and_missing_ids() -> None:
    samples = [Sample(id=i, image=f"{i}.png", rating="Safe", category=NA) for i in "abc"]
    predictions = [parse_prediction(i, "") for i in ("c", "x", "a", "y")]
    matched = match(samples, predictions)
    assert [p.id for p in matched.predictions] == ["c", "a"]
    assert (matched.unknown_ids, matched.missing_ids) == (["x", "y"], ["b"])
    assert matched.notes() == [
        "2 prediction(s) for ids not in the dataset, ignored: 'x', 'y'",
        "1 sample(s) without a prediction, counted as wrong (missing): 'b'",
    ]
    assert match(samples, [parse_prediction(i, "") for i in "abc"]).notes() == []


# -- the command ---------------------------------------------------------------------------------


def test_eval_scores_the_fixture_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    argv = ["eval", "--dataset", str(DATASET), "--predictions", str(PREDICTIONS)]
    assert main([*argv, "--report", str(report)]) == 0
    out, err = capsys.readouterr()
    assert "eval: warning: 1 prediction(s) for ids not in the dataset, ignored: 'zz'" in err
    metrics = json.loads((report / "metrics.json").read_text())
    for key in INTERFACE_KEYS:
        assert key in metrics, key
    # By hand: Unsafe a b c h i -> TP a b, FN c h i (i unparseable); Safe d e f g -> TN d e g,
    # FP f. Categories right: a b d e f g. Exceptions: g right, h wrong.
    assert (metrics["n"], metrics["unparseable"], metrics["missing"]) == (9, 1, 0)
    assert (metrics["tp"], metrics["fn"], metrics["tn"], metrics["fp"]) == (2, 3, 3, 1)
    expected = {
        "accuracy": 5 / 9,
        "precision": 2 / 3,
        "recall": 2 / 5,
        "specificity": 3 / 4,
        "balanced_accuracy": (2 / 5 + 3 / 4) / 2,
        "f1": 2 * 2 / (2 * 2 + 1 + 3),
        "f2": 5 * 2 / (5 * 2 + 4 * 3 + 1),
        "category_accuracy": 6 / 9,
        "policy_exception_rate": 1 / 2,
        "pes": 2 * 0.5 * 0.575 / (0.5 + 0.575),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["per_category"][NA]["n"] == 2
    assert len(metrics["per_category"]) == 8
    assert metrics["default_policy"]["n"] == 7
    assert metrics["scored"] == 8 and metrics["roc_auc"] is not None
    assert metrics["samples_per_second"] is None  # no run was timed
    assert metrics["header"]["source"] == "predictions"
    assert metrics["header"]["predictions"] == str(PREDICTIONS)
    for name in ("report.md", "report.html", "confusion.png", "per_category.png", "roc_pr.png"):
        assert (report / name).stat().st_size > 0, name
    wrong = [
        json.loads(line)["id"] for line in (report / "misclassified.jsonl").read_text().splitlines()
    ]
    assert wrong == ["c", "f", "h", "i"]
    assert not (report / "predictions.jsonl").exists()  # only an engine run writes it
    shown = dict(line.split(maxsplit=1) for line in out.splitlines()[:-1])
    assert shown["balanced_accuracy"] == "0.5750" and shown["unparseable"] == "1"
    assert shown["samples_per_second"] == "-"
    assert out.splitlines()[-1] == f"report: {report / 'report.md'}"


def test_eval_limit_and_missing_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(PREDICTIONS.read_text().splitlines(keepends=True)[:2]))
    argv = ["eval", "--dataset", str(DATASET), "--predictions", str(partial), "--limit", "3"]
    assert main([*argv, "--report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "1 sample(s) without a prediction, counted as wrong (missing): 'c'" in err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert (metrics["n"], metrics["missing"], metrics["tp"], metrics["fn"]) == (3, 1, 2, 1)


def test_compare_two_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "--dataset", str(DATASET), "--predictions", str(PREDICTIONS)]
    assert main([*base, "--report", str(tmp_path / "a")]) == 0
    better = tmp_path / "better.jsonl"
    fixed = [
        line.replace("'Safe', 'category': 'NA: None applying'", "'Unsafe', 'category': 'O6'")
        for line in PREDICTIONS.read_text().splitlines(keepends=True)
    ]
    better.write_text("".join(fixed))
    assert main([*base[:3], "--predictions", str(better), "--report", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("Metric")
    assert "Balanced accuracy" in text
    assert (
        main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json"]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"]["better"] == "b"
    code = main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "nothing")])
    assert code == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_compare_writes_compare_md_with_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--dataset", str(DATASET), "--predictions", str(PREDICTIONS)]
    assert main([*base, "--report", str(tmp_path / "a")]) == 0
    assert main([*base, "--limit", "5", "--report", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "review" / "cmp"
    argv = ["eval", "compare", str(a), str(b), "--format", "json", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout stays the JSON document alone
    assert captured.err == f"compare: {out / 'compare.md'}\n"
    text = (out / "compare.md").read_text()
    assert text == compare_markdown(document)
    assert text.startswith("# Comparing two evaluation reports") and "Balanced accuracy" in text
    assert document["warnings"] and document["warnings"][0] in text  # 10 vs 5 samples
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["eval", "compare", str(a), str(b), "--out", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err.count("\n")) == ("", 1)
    assert f"--out {blocker}: not a directory" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "eval: give --predictions FILE (score existing outputs) or --engine E (run a model)"),
        (["--predictions", "p.jsonl", "--engine", "fake"], "eval: give either --predictions"),
        (["--predictions", "p.jsonl", "--model", "m"], "eval: --model goes with --engine"),
        (["--predictions", "p.jsonl", "--limit", "0"], "eval: --limit must be at least 1, got 0"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["eval", "--dataset", str(DATASET), "--report", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moderator: {message}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_bad_dataset_or_report_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["eval", "--dataset", str(DATASET), "--predictions", str(PREDICTIONS)]
    assert main([*argv, "--report", str(blocker)]) == 2
    assert f"--report {blocker}: not a directory" in capsys.readouterr().err
    assert main(["eval", "--report", str(tmp_path / "r"), "--predictions", "p"]) == 2
    assert "eval: --dataset FILE is required" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        DATASET.read_text().replace('"rating\\": \\"Safe\\"', '"rating\\": \\"Fine\\"', 1)
    )
    code = main(
        [
            "eval",
            "--dataset",
            str(broken),
            "--predictions",
            str(PREDICTIONS),
            "--report",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert f"{broken}:4: entry 4 (id d)" in capsys.readouterr().err
    assert read_dataset(DATASET)[3].id == "d"
