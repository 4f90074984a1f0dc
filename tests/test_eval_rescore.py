"""`moderator eval --predictions REPORT/predictions.jsonl --report REPORT` scores a report's
answers again: the file being scored stays (an input is never deleted), while a stale
predictions.jsonl of an earlier engine run is still removed when another file is scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moderator.cli.main import main
from tests.policy_fixtures import clear_moderator_env

FIXTURES = Path(__file__).parent / "fixtures" / "predictions"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def score(predictions: Path, report: Path) -> int:
    dataset = str(FIXTURES / "dataset.jsonl")
    return main(
        ["eval", "--dataset", dataset, "--predictions", str(predictions), "--report", str(report)]
    )


def test_scoring_a_reports_own_predictions_keeps_them(tmp_path: Path) -> None:
    report = tmp_path / "ev-copy"
    report.mkdir()
    own = report / "predictions.jsonl"
    shutil.copy(FIXTURES / "predictions.jsonl", own)
    before = own.read_bytes()
    assert score(Path("ev-copy/predictions.jsonl"), Path("ev-copy")) == 0
    assert own.read_bytes() == before
    header = json.loads((report / "metrics.json").read_text())["header"]
    assert Path(header["predictions"]).name == "predictions.jsonl"


def test_another_predictions_file_replaces_a_stale_one(tmp_path: Path) -> None:
    report = tmp_path / "r"
    report.mkdir()
    (report / "predictions.jsonl").write_text("{}\n")  # an earlier engine run's
    assert score(FIXTURES / "predictions.jsonl", report) == 0
    assert not (report / "predictions.jsonl").exists()
