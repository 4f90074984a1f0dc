"""The evaluation built into a training run, on a tiny Qwen2-VL and a LoRA adapter made here:
the trained model's report, the base model's (made once), the comparison, the card's
evaluation section, a checkpoint every N steps, and `moderator eval` on a merged checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from moderator.cli.main import main
from moderator.engine.smoke import CARD
from moderator.errors import ConfigError
from tests.policy_fixtures import clear_moderator_env
from tests.test_finetune_merge import make_adapter
from tests.test_training_eval import make_dataset

pytestmark = pytest.mark.transformers


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no ./policies: samples without a prompt get the bundled one


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft", reason="needs the train extra (peft)")
    pytest.importorskip("xgrammar", reason="needs the transformers extra (xgrammar)")
    from moderator.dev.tiny.checkpoint import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-eval") / "qwen2-vl", "qwen2-vl")


@pytest.fixture(scope="module")
def adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(base, tmp_path_factory.mktemp("adapter") / "final")


def settings_file(path: Path) -> Path:
    engine = {
        "transformers": {"device": "cpu", "threads": 1, "warmup": False},
        "generation": {"max_new_tokens": 80, "rationale_max_chars": 48},
        "batch_size": 4,
    }
    path.write_text(yaml.safe_dump({"engine": engine}), encoding="utf-8")
    return path


def make_run(root: Path, base: Path, adapter: Path, **config: Any) -> Path:
    """A finished LoRA run: config.yaml, final/ (the adapter), a dataset with an eval split
    (one red image, Unsafe; one green, Safe)."""
    data = root / "data"
    (data / "data.json").parent.mkdir(parents=True)
    make_dataset(data, 2).rename(data / "eval.json")
    shutil.copy(data / "eval.json", data / "train.json")
    run = root / "run-acme"
    shutil.copytree(adapter, run / "final")
    doc = {
        "base_model": str(base),
        "dataset": str(data),
        "output_dir": str(run),
        "method": "lora",
        "settings": str(settings_file(root / "settings.yaml")),
        **config,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return run


def read(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def test_a_run_is_evaluated_every_n_steps_and_at_the_end(
    tmp_path: Path, base: Path, adapter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import TrainerControl, TrainerState

    from moderator.training.finetune.evaluate import PeriodicEval, evaluate_run
    from moderator.training.finetune.merge import merge_lora

    run = make_run(tmp_path, base, adapter, eval={"every_steps": 2})
    for step in (2, 3):
        shutil.copytree(adapter, run / f"checkpoint-{step}")
    callback = PeriodicEval(run, every_steps=2)
    for step in (2, 3):
        state = TrainerState(global_step=step)
        callback.on_save(None, state, TrainerControl())  # type: ignore[arg-type]  # unused
    assert callback.reports == [run / "eval" / "step-2"]
    step_metrics = read(run / "eval" / "step-2" / "metrics.json")
    assert step_metrics["n"] == 2 and step_metrics["header"]["model"] == "run-acme-step-2"
    assert (run / "eval" / "step-2" / "compare.md").is_file()
    assert not (run / "eval" / "step-3").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".eval")] == []  # scratch gone
    merged_step = merge_lora(run / "checkpoint-2", tmp_path / "step-2")
    assert read(merged_step / CARD)["evaluation"]["report"] == str(run / "eval" / "step-2")
    base_made = (run / "eval-base" / "metrics.json").stat().st_mtime_ns

    assert evaluate_run(run) == run / "eval"
    # The base report is kept: same base, eval split and settings.
    assert (run / "eval-base" / "metrics.json").stat().st_mtime_ns == base_made
    tuned, untuned = read(run / "eval" / "metrics.json"), read(run / "eval-base" / "metrics.json")
    card = read(run / "merged" / CARD)
    assert (tuned["n"], untuned["n"]) == (2, 2)
    assert tuned["header"]["model"] == "run-acme"
    assert tuned["header"]["revision"] == card["revision"]
    assert tuned["header"]["smoke_test"] is True
    assert untuned["header"]["model"] == str(base.resolve())
    assert tuned["header"]["dataset"] == str(tmp_path / "data" / "eval.json")
    compare = (run / "eval" / "compare.md").read_text()
    assert compare.startswith("# Comparing two evaluation reports")
    assert "run-acme/eval-base\n" in compare and "run-acme/eval\n" in compare  # A and B
    # The merged model's card carries the evaluation it just had.
    assert card["evaluation"]["metrics"]["n"] == 2
    assert card["evaluation"]["base_metrics"]["n"] == 2
    assert "| balanced_accuracy |" in (run / "merged" / "README.md").read_text()
    err = capsys.readouterr().err
    assert "SMOKE-TEST model" in err
    # The step's report names its checkpoint, not the scratch directory removed after it.
    assert ".eval-step-2" not in err.replace("into " + str(run / ".eval-step-2"), "")
    assert f"eval: SMOKE-TEST model ({run / 'checkpoint-2'}): the metrics" in err
    assert step_metrics["header"]["model_path"] == str(run / "checkpoint-2")
    assert f"eval: merging the adapter {run / 'final'} into {run / 'merged'} for the" in err
    verdict = "eval: the base model (A) against the trained one (B): "
    assert f"{verdict}" in err and f" ({run / 'eval' / 'compare.md'})\n" in err
    with pytest.raises(ConfigError, match="every_steps must be at least 1"):
        PeriodicEval(run, every_steps=0)


def test_a_full_runs_final_model_is_named_by_its_card(tmp_path: Path, base: Path) -> None:
    from moderator.training.finetune.evaluate import evaluate_run
    from moderator.training.finetune.trainer import write_full_run_card

    run = make_run(tmp_path, base, base, method="full")  # final/: a whole model
    write_full_run_card(run, base)
    assert evaluate_run(run) == run / "eval"
    card = read(run / "final" / CARD)
    header = read(run / "eval" / "metrics.json")["header"]
    assert (header["model"], header["revision"]) == ("run-acme", card["revision"])
    assert card["evaluation"]["metrics"]["n"] == 2  # the card was given the evaluation


def test_another_base_is_evaluated_again(tmp_path: Path, base: Path, adapter: Path) -> None:
    from moderator.training.finetune.config import load_config
    from moderator.training.finetune.evaluate import base_cache_key

    run = make_run(tmp_path, base, adapter)
    config = load_config(run / "config.yaml")
    key = base_cache_key(base, config, tmp_path / "data" / "eval.json")
    assert key == base_cache_key(base, config, tmp_path / "data" / "eval.json")
    other = shutil.copytree(base, tmp_path / "other-base")
    assert base_cache_key(other, config, tmp_path / "data" / "eval.json") != key
    assert base_cache_key(base, config, tmp_path / "data" / "train.json") == key  # same bytes
    (tmp_path / "data" / "train.json").write_text("[]")
    assert base_cache_key(base, config, tmp_path / "data" / "train.json") != key


def test_the_merged_model_is_reused_while_the_adapter_is_the_same(
    tmp_path: Path, base: Path, adapter: Path
) -> None:
    from moderator.training.finetune.evaluate import final_model

    run = make_run(tmp_path, base, adapter)
    merged = final_model(run)
    assert merged == run / "merged"
    made = (merged / "model.safetensors").stat().st_mtime_ns
    revision = read(merged / CARD)["revision"]
    assert final_model(run) == merged
    assert (merged / "model.safetensors").stat().st_mtime_ns == made
    make_adapter(base, run / "final", seed=2)  # trained again: another adapter
    assert final_model(run) == merged
    assert read(merged / CARD)["revision"] != revision


def test_no_eval_split_means_no_evaluation(tmp_path: Path, base: Path, adapter: Path) -> None:
    from moderator.training.finetune.evaluate import evaluate_run

    run = make_run(tmp_path, base, adapter, eval={"enabled": False})
    assert evaluate_run(run) is None
    (tmp_path / "data" / "eval.json").unlink()
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"enabled": None}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert evaluate_run(run) is None
    config["eval"] = {"enabled": True}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="has no eval split"):
        evaluate_run(run)
    assert not (run / "eval").exists()


@pytest.mark.parametrize("arch", ["llava-onevision", "qwen2-vl", "qwen2.5-vl"])
def test_moderator_eval_runs_a_merged_checkpoint(
    tmp_path: Path, base: Path, arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from moderator.dev.tiny.checkpoint import make_tiny
    from moderator.training.finetune.merge import merge_lora

    tiny = base if arch == "qwen2-vl" else make_tiny(tmp_path / arch, arch)
    adapter = make_adapter(tiny, tmp_path / "adapter")
    merged = merge_lora(adapter, tmp_path / "acme-guard", base=tiny)
    dataset = make_dataset(tmp_path, 2)
    settings = settings_file(tmp_path / "s.yaml")
    argv = ["eval", "--dataset", str(dataset), "--engine", "transformers", "--model", str(merged)]
    assert main([*argv, "--config", str(settings), "--report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "SMOKE-TEST model (transformers: acme-guard)" in err
    metrics = read(tmp_path / "r" / "metrics.json")
    assert (metrics["n"], metrics["unparseable"]) == (2, 0)
    assert metrics["header"]["model"] == "acme-guard"
