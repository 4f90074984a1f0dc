"""`moderator eval` with samples whose request failed (an image over the `fetch` limits): each is
an error with its code, not an unparseable answer. The code and message are kept in
predictions.jsonl and misclassified.jsonl and survive scoring that file again, with the
smoke-test flag; a run in which every sample failed exits 1; `--limit` does not turn the
predictions of the samples after it into unknown ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.training.predictions import read_predictions
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_eval import make_dataset

EVERY_FAILED = re.compile(
    r"moderator: eval: every sample failed \(decompression_bomb 3\): no model answer to "
    r"score; \S+misclassified\.jsonl has each error"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def bombs(tmp_path: Path) -> Path:
    """Settings under which every generated image is a decompression bomb."""
    path = tmp_path / "bomb.yaml"
    path.write_text("fetch:\n  max_pixels: 100\n", encoding="utf-8")
    return path


def run_fake(dataset: Path, report: str, *extra: str) -> int:
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", report]
    return main([*argv, *extra])


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_failed_requests_are_errors_with_their_code_and_exit_1_when_all_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 3)
    assert run_fake(dataset, "r", "--config", str(bombs(tmp_path))) == 1
    out, err = capsys.readouterr()
    assert "errors                 3" in out and "unparseable            0" in out
    warning = (
        "eval: warning: 3 sample(s) failed with decompression_bomb (no answer; counted as "
        "wrong): 's0' (images/s0.png), 's1' (images/s1.png), 's2' (images/s2.png); first "
        "error: 40x32 = 1280 pixels (limit 100)"
    )
    assert warning in err.splitlines()
    assert "no answer came with a score" not in err  # the failures say why
    assert EVERY_FAILED.fullmatch(err.splitlines()[-1])
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert (metrics["errors"], metrics["unparseable"], metrics["n"]) == (3, 0, 3)
    assert metrics["header"]["errors"] == {"decompression_bomb": 3}
    first = lines(tmp_path / "r" / "predictions.jsonl")[0]
    assert first == {
        "id": "s0",
        "output": "",
        "error": "decompression_bomb",
        "error_message": "40x32 = 1280 pixels (limit 100)",
        "smoke_test": True,
    }
    wrong = lines(tmp_path / "r" / "misclassified.jsonl")[0]
    assert (wrong["error"], wrong["error_code"]) == ("failed", "decompression_bomb")
    assert wrong["error_message"] == "40x32 = 1280 pixels (limit 100)"
    # Scored again: the same errors, the same header errors, the same exit.
    argv = ["eval", "--dataset", str(dataset), "--predictions", "r/predictions.jsonl"]
    assert main([*argv, "--report", "r2"]) == 1
    assert EVERY_FAILED.fullmatch(capsys.readouterr().err.splitlines()[-1])
    again = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert again["header"]["errors"] == {"decompression_bomb": 3}
    assert (again["errors"], again["unparseable"]) == (3, 0)
    assert lines(tmp_path / "r2" / "misclassified.jsonl")[0] == wrong


def test_a_run_with_some_answers_exits_0(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, 3)
    (tmp_path / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run_fake(dataset, "r") == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["errors"] == 1 and metrics["header"]["errors"] == {"corrupt_image": 1}


def test_rescoring_a_smoke_test_models_answers_keeps_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 4)
    assert run_fake(dataset, "eval-fake") == 0
    argv = ["eval", "--dataset", str(dataset), "--predictions", "eval-fake/predictions.jsonl"]
    assert main([*argv, "--report", "rescored"]) == 0
    header = json.loads((tmp_path / "rescored" / "metrics.json").read_text())["header"]
    assert header["smoke_test"] is True and header["source"] == "predictions"
    report = (tmp_path / "rescored" / "report.md").read_text(encoding="utf-8")
    assert "smoke-test model (the answers in eval-fake/predictions.jsonl)" in report
    capsys.readouterr()
    assert main(["eval", "compare", "eval-fake", "rescored"]) == 0
    out = capsys.readouterr().out
    assert "B was answered by a smoke-test model (the answers in eval-fake" in out
    # A predictions file from elsewhere, without the flag: no smoke-test claim either way.
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        "".join(
            json.dumps({"id": p.id, "output": p.output}) + "\n"
            for p in read_predictions(tmp_path / "eval-fake" / "predictions.jsonl")
        ),
        encoding="utf-8",
    )
    assert (
        main(["eval", "--dataset", str(dataset), "--predictions", str(plain), "--report", "p"]) == 0
    )
    assert "smoke_test" not in json.loads((tmp_path / "p" / "metrics.json").read_text())["header"]


def test_predictions_beyond_the_limit_are_not_unknown_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 6)
    assert run_fake(dataset, "all") == 0
    predictions = tmp_path / "all" / "predictions.jsonl"
    with predictions.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "zz", "output": "{}"}) + "\n")
    capsys.readouterr()
    argv = ["eval", "--dataset", str(dataset), "--predictions", str(predictions)]
    assert main([*argv, "--limit", "2", "--report", "two"]) == 0
    err = capsys.readouterr().err
    assert "eval: warning: 1 prediction(s) for ids not in the dataset, ignored: 'zz'" in err
    assert "without a prediction" not in err
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["n"] == 2


def test_a_failed_line_is_read_as_failed_and_a_bad_one_is_named(tmp_path: Path) -> None:
    from moderator.errors import ConfigError

    path = tmp_path / "p.jsonl"
    answer = json.dumps({"rating": "Safe", "category": "NA: None applying"})
    failed = {"id": "a", "output": answer, "error": "engine_timeout", "error_message": "60 s"}
    path.write_text(json.dumps(failed) + "\n", encoding="utf-8")
    [prediction] = read_predictions(path)
    assert (prediction.rating, prediction.error, prediction.error_message) == (
        None,
        "engine_timeout",
        "60 s",
    )
    assert prediction.failed and not prediction.unparseable
    for bad, reason in (
        ({"error": 3}, '"error" must be an error code (a non-empty string) when given'),
        ({"error_message": ["x"]}, '"error_message" must be a string when given'),
        ({"smoke_test": "yes"}, '"smoke_test" must be true or false when given'),
    ):
        path.write_text(json.dumps({"id": "a", "output": "", **bad}) + "\n", encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            read_predictions(path)
        assert str(caught.value) == f"{path}:1: {reason}"
