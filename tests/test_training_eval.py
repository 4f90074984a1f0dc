"""`moderator eval --engine`: generated images and a dataset file run end to end through the
service's engine code (the OpenAI-compatible test server, a tiny transformers checkpoint, the
fake engine) into a report with every metric key; the runner's prompts, errors and progress."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from moderator.cli.eval import score_note
from moderator.cli.main import main
from moderator.dev.openai.server import CompletionParams, OpenAITestServer, ScriptedBackend
from moderator.durations import duration
from moderator.pipeline.progress import Counts
from moderator.policy.bundled import write_default_policy
from moderator.settings import EngineSettings, Settings, TenancySettings
from moderator.training.dataset import Sample, write_dataset
from moderator.training.evaluate import default_policy_prompt, loading_line
from moderator.training.metrics import Prediction
from moderator.training.run_progress import RunProgress
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_predictions import INTERFACE_KEYS

O1 = "O1: Hate, Humiliation, Harassment"
NA = "NA: None applying"
RED, GREEN = (220, 20, 20), (20, 200, 40)
UNSAFE = json.dumps({"rating": "Unsafe", "category": O1, "rationale": "A red warning image."})
SAFE = json.dumps({"rating": "Safe", "category": NA, "rationale": "A green field."})
CUSTOM = "A custom policy prompt for one sample."


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no ./policies: samples without a prompt get the bundled one


def make_dataset(root: Path, n: int = 6, *, custom: str | None = None) -> Path:
    """n generated images (even: red and Unsafe O1; odd: green and Safe), a dataset file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        unsafe = i % 2 == 0
        Image.new("RGB", (40 + 7 * i, 32 + 3 * i), RED if unsafe else GREEN).save(
            root / "images" / f"s{i}.png"
        )
        samples.append(
            Sample(
                id=f"s{i}",
                image=f"images/s{i}.png",
                rating="Unsafe" if unsafe else "Safe",
                category=O1 if unsafe else NA,
                prompt=custom if custom is not None and i == n - 1 else None,
            )
        )
    path = root / "data.json"
    write_dataset(path, samples)
    return path


def by_colour(prompt: str, image: Image.Image, params: CompletionParams) -> str:
    """A model that sees red as Unsafe, and has no answer under the custom prompt."""
    if prompt.startswith(CUSTOM):
        return "I am not sure what to say."
    red, green, _ = image.convert("RGB").getpixel((0, 0))  # type: ignore[misc]
    return UNSAFE if red > green else SAFE


def openai_config(path: Path, server: OpenAITestServer) -> Path:
    doc = {
        "engine": {
            "kind": "openai",
            "base_url": server.url,
            "model": server.model,
            "retries": 0,
            "timeout_s": 20,
            "openai": {"attempts": 1},
        }
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture
def server() -> Any:
    with OpenAITestServer(ScriptedBackend(respond=by_colour), model="test-guard") as srv:
        yield srv


def test_openai_engine_end_to_end(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 6, custom=CUSTOM)
    report = tmp_path / "report"
    argv = ["eval", "--dataset", str(dataset), "--engine", "openai", "--model", "test-guard"]
    argv += ["--config", str(openai_config(tmp_path / "s.yaml", server)), "--report", str(report)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    metrics = json.loads((report / "metrics.json").read_text())
    for key in INTERFACE_KEYS:
        assert key in metrics, key
    # s0 s2 s4 red -> Unsafe (right); s1 s3 green -> Safe (right); s5 custom prompt -> no answer.
    assert (metrics["n"], metrics["unparseable"]) == (6, 1)
    assert (metrics["tp"], metrics["tn"], metrics["fp"], metrics["fn"]) == (3, 2, 1, 0)
    assert metrics["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert metrics["samples_per_second"] > 0
    assert metrics["header"]["engine"] == "openai" and metrics["header"]["model"] == "test-guard"
    for name in ("report.md", "report.html", "confusion.png", "per_category.png"):
        assert (report / name).stat().st_size > 0, name
    lines = [json.loads(x) for x in (report / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"s{i}" for i in range(6)]
    assert lines[0]["output"] == UNSAFE and lines[5]["output"] == "I am not sure what to say."
    # The warm-up, then one request per sample: its own prompt, else the default policy's.
    prompts = [call[0] for call in server.backend.calls]  # type: ignore[attr-defined]
    default, _ = default_policy_prompt(None, TenancySettings())
    assert len(prompts) == 7
    assert prompts.count(default) == 6 and prompts.count(CUSTOM) == 1
    assert "eval: 5 sample(s) without a prompt use the bundled default policy" in err
    assert re.search(
        r"^eval: 6/6 samples \(100%\), errors 1, [\d.]+ samples/s, [\d.]+ s$", err, re.M
    )
    assert "SMOKE-TEST model (openai: test-guard)" in err
    assert "balanced_accuracy      0.8333" in out


def test_limit_runs_the_first_samples_only(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 6)
    config = openai_config(tmp_path / "s.yaml", server)
    argv = ["eval", "--dataset", str(dataset), "--engine", "openai", "--config", str(config)]
    assert main([*argv, "--limit", "2", "--report", str(tmp_path / "r")]) == 0
    assert len(server.backend.calls) == 3  # type: ignore[attr-defined]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert (metrics["n"], metrics["accuracy"]) == (2, 1.0)


def test_a_corrupt_image_is_an_error_prediction_and_a_missing_one_stops_early(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 4)
    (tmp_path / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    config = openai_config(tmp_path / "s.yaml", server)
    argv = ["eval", "--dataset", str(dataset), "--engine", "openai", "--config", str(config)]
    assert main([*argv, "--report", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["header"]["errors"] == {"corrupt_image": 1}
    # A failed request is an error, not an answer the parser could not read; still wrong.
    assert (metrics["errors"], metrics["unparseable"], metrics["fp"]) == (1, 0, 1)
    assert metrics["confusion"]["Safe"]["error"] == 1
    assert len(server.backend.calls) == 4  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    assert re.search(
        r"^eval: warning: 1 sample\(s\) failed with corrupt_image \(no answer; counted as "
        r"wrong\): 's1' \(images/s1.png\); \S",
        err,
        re.M,
    )
    assert "errors                 1" in out and "unparseable            0" in out
    (tmp_path / "images" / "s2.png").unlink()
    assert main([*argv, "--report", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"moderator: eval: 1 image file(s) not found: {dataset} sample 's2' (images/s2.png); "
        f"relative image paths are taken from the dataset file's folder ({tmp_path})\n"
    )
    assert len(server.backend.calls) == 4  # type: ignore[attr-defined]
    assert not (tmp_path / "r2").exists()


def test_a_missing_checkpoint_stops_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 2)
    argv = ["eval", "--dataset", str(dataset), "--engine", "transformers", "--model"]
    assert main([*argv, str(tmp_path / "nope"), "--report", str(tmp_path / "r")]) == 2
    assert "engine.model: no checkpoint directory at" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_fake_engine_run_has_scores_and_threshold_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 10)
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", str(tmp_path / "r")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["unparseable"] == 0
    assert metrics["scored"] == 10 and metrics["thresholds"] is not None
    assert (tmp_path / "r" / "roc_pr.png").is_file()
    assert (tmp_path / "r" / "calibration.png").is_file()


def test_the_default_prompt_comes_from_the_policy_directory(tmp_path: Path) -> None:
    tenancy = TenancySettings()
    bundled, where = default_policy_prompt(None, tenancy)
    assert where == "the bundled default policy"
    assert bundled.count("O1: Hate, Humiliation, Harassment") >= 1
    assert default_policy_prompt(tmp_path, tenancy) == (bundled, where)  # no default.yaml there
    path = write_default_policy(tmp_path)
    assert default_policy_prompt(tmp_path, tenancy) == (bundled, str(path))
    edited = path.read_text(encoding="utf-8").replace(
        "    should_not:\n", "    should_not:\n      - show edited bullets\n", 1
    )
    path.write_text(edited, encoding="utf-8")
    prompt, _ = default_policy_prompt(tmp_path, tenancy)
    assert "show edited bullets" in prompt and "show edited bullets" not in bundled


def test_progress_line_and_durations() -> None:
    stream = io.StringIO()
    progress = RunProgress(stream, "eval")
    progress._next = 0.0  # the next tick draws
    progress.tick(Counts(10, 3, 1, 0), listing=False)
    progress.finish(Counts(10, 3, 1, 0))
    ticked, final = stream.getvalue().splitlines()
    pattern = r"eval: 3/10 samples \(30%\), errors 1, [\d.]+ samples/s"
    assert re.fullmatch(pattern + r", ETA [\w ]+", ticked), ticked
    # The final line (also where a Ctrl-C stopped the run) has the wall time, no ETA.
    assert re.fullmatch(pattern + r", [\d.]+ s", final), final
    assert [duration(s) for s in (0.2, 12, 184, 7500)] == [
        "0 s",
        "12 s",
        "3 min 04 s",
        "2 h 05 min",
    ]


# -- a tiny transformers checkpoint --------------------------------------------------------------


def _transformers_or_skip() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import xgrammar  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the transformers extra is missing in CI: {exc}")
        pytest.skip(f"needs the transformers extra: {exc}")


@pytest.mark.transformers
def test_transformers_tiny_checkpoint_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _transformers_or_skip()
    from moderator.dev.tiny.checkpoint import make_tiny

    model = make_tiny(tmp_path / "tiny", "qwen2-vl")
    dataset = make_dataset(tmp_path, 4)
    config = tmp_path / "s.yaml"
    engine = {
        "transformers": {"device": "cpu", "threads": 1, "warmup": False},
        "generation": {"max_new_tokens": 80, "rationale_max_chars": 48},
        "batch_size": 4,
    }
    config.write_text(yaml.safe_dump({"engine": engine}), encoding="utf-8")
    report = tmp_path / "report"
    argv = ["eval", "--dataset", str(dataset), "--engine", "transformers", "--model", str(model)]
    assert main([*argv, "--config", str(config), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "SMOKE-TEST model (transformers:" in err
    metrics = json.loads((report / "metrics.json").read_text())
    for key in INTERFACE_KEYS:
        assert key in metrics, key
    # Constrained decoding: every answer parses and carries P(Unsafe).
    assert (metrics["n"], metrics["unparseable"], metrics["scored"]) == (4, 0, 4)
    assert metrics["roc_auc"] is not None
    assert metrics["header"]["engine"] == "transformers"
    lines = (report / "predictions.jsonl").read_text().splitlines()
    assert all(json.loads(x)["output"].startswith('{"rating": "') for x in lines)
    for name in ("report.html", "roc_pr.png", "calibration.png"):
        assert (report / name).stat().st_size > 0, name


# -- what a long run tells its user --------------------------------------------------------------


def test_loading_is_announced_and_missing_scores_explained(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loading a real checkpoint takes minutes: the user sees it start and end. The scripted
    server sends no log-probabilities, so no answer has a score: stderr says why the score
    metrics are missing instead of leaving `roc_auc -` unexplained."""
    dataset = make_dataset(tmp_path, 2)
    config = openai_config(tmp_path / "s.yaml", server)
    argv = ["eval", "--dataset", str(dataset), "--engine", "openai", "--config", str(config)]
    assert main([*argv, "--report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "eval: 2 sample(s) without a prompt use the bundled default policy"
    assert err[1] == (
        f"eval: loading the openai engine (model test-guard at {server.url}), "
        "then one warm-up request"
    )
    assert re.fullmatch(
        r"eval: engine ready in \d+ s \(a SMOKE-TEST model: its answers mean nothing\)", err[2]
    )
    assert err[-1] == (
        "eval: no answer came with a score (P(Unsafe)), so ROC-AUC, PR-AUC, calibration and "
        'the threshold table are left out; docs/evaluation.md, "Scores", says what an engine '
        "needs to give one"
    )


def test_the_score_note_counts_predictions_without_one() -> None:
    scored = Prediction("a", "Safe", NA, 0.1, "{}")
    unscored = Prediction("b", None, None, None, "")
    assert score_note([scored, scored]) is None
    assert score_note([scored, unscored, unscored]) == (
        "2 of 3 prediction(s) have no score: the score metrics use the 1 that have one"
    )
    assert (score_note([unscored]) or "").startswith("no answer came with a score")


def test_a_password_in_the_server_address_is_not_shown() -> None:
    # Settings refuse such a URL (test_settings_errors); the line masks one all the same.
    engine = EngineSettings(kind="openai", model="m", base_url="http://u:secret@h:1/v1")
    line = loading_line(Settings.model_construct(engine=engine))
    assert "secret" not in line and "http://u:***@h:1/v1" in line


def test_the_header_fingerprints_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path, 2)
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", str(tmp_path / "r")]
    assert main(argv) == 0
    header = json.loads((tmp_path / "r" / "metrics.json").read_text())["header"]
    assert header["dataset_sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()


def test_missing_images_are_listed_once_with_their_sample_count() -> None:
    from moderator.training.predictions import missing_images, not_found

    # Augmented variants share their original's image: each path once, with its first sample
    # and how many more use it; the dataset file named, and where relative paths start.
    data = Path("data") / "test.json"
    samples = [
        Sample(id=i, image=image, rating="Safe", category=NA)
        for i, image in (("a", "../p/a.png"), ("b", "b.png"), ("a_x", "../p/a.png"))
    ]
    assert not_found(missing_images(data, samples)) == (
        "2 image file(s) not found (for 3 samples): data/test.json sample 'a' (../p/a.png; 1 "
        "more sample(s) use it), data/test.json sample 'b' (b.png); relative image paths are "
        "taken from the dataset file's folder (data)"
    )
    assert not_found(missing_images(data, samples[1:2])) == (
        "1 image file(s) not found: data/test.json sample 'b' (b.png); relative image paths "
        "are taken from the dataset file's folder (data)"
    )
