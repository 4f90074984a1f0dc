"""`moderator eval compare` reads only evaluation reports: a JSON object that is not one (`{}`,
another tool's output) or whose metric is not a number is refused in one line naming the file
and the problem, exit 2, instead of a table of '-'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moderator.cli.main import main
from moderator.training.report_compare import report_problem
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_eval import make_dataset


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    dataset = make_dataset(tmp_path, 4)
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", "eval-fake"]
    assert main(argv) == 0
    return tmp_path / "eval-fake"


def edited(report: Path, path: Path, **changes: Any) -> Path:
    doc = json.loads((report / "metrics.json").read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_a_real_report_is_one() -> None:
    doc = {"n": 4, "balanced_accuracy": 0.5, "recall": None, "pes": None, "unparseable": 0}
    assert report_problem(doc) is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"balanced_accuracy": "high"}, "balanced_accuracy: must be a number or null, got 'high'"),
        ({"n": "4"}, "n: must be a count of samples, got '4'"),
        ({"header": []}, "header: must be an object, got []"),
        ({"brier": True}, "brier: must be a number or null, got True"),
        (
            {"per_category": {"O1": {"recall": "x"}}},
            "per_category.O1.recall: must be a number or null, got 'x'",
        ),
    ],
)
def test_a_bad_metric_names_the_file_and_the_key(
    report: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    problem: str,
) -> None:
    bad = edited(report, tmp_path / "bad.json", **changes)
    capsys.readouterr()
    assert main(["eval", "compare", str(report), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"moderator: B: {bad}: not an evaluation report (the metrics.json of `moderator eval "
        f"--report`): {problem}\n"
    )


def test_an_empty_object_is_not_a_report(
    report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fakem.json"
    fake.write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", "compare", str(fake), str(report)]) == 2
    assert capsys.readouterr().err == (
        f"moderator: A: {fake}: not an evaluation report (the metrics.json of `moderator eval "
        "--report`): no 'n', 'balanced_accuracy', 'recall', 'pes', 'unparseable'\n"
    )
