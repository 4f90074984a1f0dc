"""Training runs on tiny checkpoints of the three architectures: LoRA and full fine-tuning lower
the loss, the result loads, a resumed run continues where its checkpoint stopped."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from moderator.errors import ConfigError
from moderator.fetch.decode import DecodeLimits
from moderator.settings import EngineSettings, Settings
from moderator.training.dataset import write_dataset
from moderator.training.evaluate import ImageSource
from moderator.training.finetune import rundir
from moderator.training.finetune.inputs import sha256_file
from tests.finetune_fixtures import ARCHES, make_dataset, make_samples, run_config
from tests.policy_fixtures import clear_moderator_env, default_yaml

pytestmark = pytest.mark.transformers

torch = pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("transformers", reason="needs the transformers extra")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # noqa: E402  # torch checked first
from moderator.engine.smoke import CARD, MARKER  # noqa: E402
from moderator.engine.transformers import load as hf_load  # noqa: E402
from moderator.training.finetune.card import weights_revision  # noqa: E402
from moderator.training.finetune.collate import Collator  # noqa: E402
from moderator.training.finetune.data import ChatEncoder, TrainingSet  # noqa: E402
from moderator.training.finetune.trainer import TrainResult, train  # noqa: E402

DROP = 0.4
"""How far (in nats) a few steps must lower the loss on the training batch."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no ./policies: the bundled default policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-train")
    return {arch: make_tiny(root / arch, arch) for arch in ARCHES}


def run(config: Any, resume: Any = None) -> tuple[TrainResult, str]:
    """Train; the result and what went to stderr."""
    stderr = io.StringIO()
    return train(config, resume=resume, stderr=stderr), stderr.getvalue()


def losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in rundir.read_log(run_dir) if "loss" in e}


def batch_loss(model: Any, base: Path, dataset: Path) -> float:
    """The loss of `model` on the whole training split as one batch."""
    loaded = hf_load.load(
        EngineSettings.model_validate(
            {"kind": "transformers", "model": str(base), "transformers": {"device": "cpu"}}
        )
    )
    settings = Settings()
    examples = TrainingSet(
        make_samples(dataset),
        ChatEncoder(loaded.processor, loaded.eos_token_ids),
        ImageSource(dataset / "train.json", settings),
        default_prompt="unused",
        limits=DecodeLimits.from_settings(settings.fetch),
        input_size=hf_load.input_size(loaded),
    )
    batch = Collator(loaded.pad_token_id)([examples[0], examples[1]])
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def load_final(final: Path, base: Path, method: str) -> Any:
    from transformers import AutoModelForImageTextToText

    if method == "full":
        return AutoModelForImageTextToText.from_pretrained(final)
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), final)


# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it loads an adapter.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("arch", ARCHES)
def test_a_few_steps_lower_the_loss_and_the_result_loads(
    arch: str, method: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    data = make_dataset(tmp_path / "data")
    result, _ = run(run_config(tiny[arch], data, tmp_path / "run", method=method, max_steps=10))
    assert result.steps == 10
    logged = losses(result.run)
    assert sorted(logged) == list(range(1, 11))
    # The same two-sample batch at every step: the loss falls (by ~0.6 nats for the slowest,
    # LoRA on LLaVA-OneVision; by 4 for full fine-tuning).
    assert logged[10] < logged[1] - DROP, logged
    final = result.final
    assert final is not None
    expected = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (final / expected).is_file()
    if method == "full":  # servable as it is: its card names it in verdicts and reports
        card = json.loads((final / CARD).read_text())
        assert (card["name"], card["revision"]) == ("run", weights_revision(final))
        assert card["training"]["method"] == "full"
    else:  # an adapter: no card (train merge writes one), nor peft's empty template
        assert not (final / CARD).exists() and not (final / "README.md").exists()
    assert (final / MARKER).is_file()  # tuned from a smoke-test model: still one
    processor = json.loads((final / "processor_config.json").read_text())
    assert not processor["processor_class"].startswith("ImageOnly")
    before = batch_loss(AutoModelForImageTextToText.from_pretrained(tiny[arch]), tiny[arch], data)
    after = batch_loss(load_final(final, tiny[arch], method), tiny[arch], data)
    assert after < before - DROP, (before, after)


def test_the_run_directory_records_config_log_and_progress(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    samples = make_samples(data)
    samples[1] = dataclasses.replace(samples[1], prompt=None)  # the default policy's prompt
    write_dataset(data / "train.json", samples)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(default_yaml())  # short texts: a short prompt
    config = run_config(
        tiny["qwen2-vl"], data, tmp_path / "run", max_steps=3, policies=str(policies)
    )
    result, stderr = run(config)
    where = policies / "default.yaml"
    assert f"train: 1 sample(s) without a prompt use {where}" in stderr
    saved = yaml.safe_load((result.run / rundir.CONFIG_FILE).read_text())
    assert saved["arch"] == "qwen2-vl"
    assert saved["base_model"] == str(tiny["qwen2-vl"].resolve())
    assert saved["learning_rate"] == 5e-3
    assert saved["eval"]["enabled"] is False
    resolved = saved["resolved"]
    assert resolved["architecture"] == "Qwen2VLForConditionalGeneration"
    assert resolved["dataset_sha256"] == {"train": sha256_file(data / "train.json")}
    assert resolved["samples"] == 2
    assert resolved["default_prompt"] == str(where)
    assert 0 < resolved["trainable_parameters"] < resolved["parameters"]
    log = rundir.read_log(result.run)
    assert [e["step"] for e in log] == [1, 2, 3, 3]  # three steps, then the summary
    assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "time"} <= set(log[0])
    assert "train_runtime" in log[-1]
    assert "train: step 1/3 (33%), epoch 1.00, loss " in stderr
    first = next(line for line in stderr.splitlines() if line.startswith("train: step 1/3"))
    assert ", ETA " in first and " s/step" in first
    assert "train: done, 3 steps in " in stderr
    assert capsys.readouterr().out == ""  # stdout is for a command's data only
    assert [p.name for _, p in rundir.checkpoints(result.run)] == ["checkpoint-3"]
    assert (result.run / "checkpoint-3" / "tokenizer.json").is_file()  # loads on its own


def test_the_plan_and_the_first_step_are_shown_at_once(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data")
    config = run_config(tiny["qwen2-vl"], data, tmp_path / "run", max_steps=2, logging_steps=10)
    result, stderr = run(config)
    lines = stderr.splitlines()
    assert "train: SMOKE-TEST base model (random weights): the trained model means nothing" in lines
    plan = "train: 2 optimizer steps of 2 samples (2.0 epochs of 2), logged every 10, saved every 3"
    assert plan in lines
    first = [line for line in lines if line.startswith("train: step ")]
    assert len(first) == 1 and first[0].startswith("train: step 1/2 (50%), epoch 1.00, loss ")
    assert [e["step"] for e in rundir.read_log(result.run)] == [1, 2]  # step 1, the summary


def test_target_modules_that_match_nothing_are_named(tiny: dict[str, Path], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    config = run_config(
        tiny["qwen2.5-vl"], data, tmp_path / "run", lora={"target_modules": ["qkv"]}
    )
    with pytest.raises(ConfigError) as caught:
        run(config)
    assert str(caught.value) == (
        "lora.target_modules: no linear layer of the language model is named qkv (its "
        "projections: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
    )


def test_device_cuda_without_cuda_is_refused_before_the_data_is_read(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tmp_path / "data"
    write_dataset(data / "train.json", make_samples(data))
    shutil.rmtree(data / "images")  # reading the data would fail on these first
    stderr = io.StringIO()
    config = run_config(tiny["qwen2-vl"], data, tmp_path / "run", device="cuda")
    with pytest.raises(ConfigError, match=r"^device: cuda, but no CUDA device is available here$"):
        train(config, stderr=stderr)
    assert stderr.getvalue() == ""


def test_resume_continues_from_the_checkpoints_step(tiny: dict[str, Path], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    config = run_config(tiny["qwen2.5-vl"], data, tmp_path / "run", max_steps=4, save_steps=2)
    first, _ = run(config)
    straight = losses(first.run)
    with pytest.raises(ConfigError, match=r"already holds a run .*--resume"):
        train(config)
    resumed, stderr = run(config, first.run / "checkpoint-2")
    assert resumed.steps == 4
    assert f"train: resuming from {first.run / 'checkpoint-2'}" in stderr
    assert "train: step 3/4" in stderr
    assert "train: step 1/4" not in stderr
    again = losses(resumed.run)
    assert sorted(again) == [1, 2, 3, 4]  # steps 3 and 4 logged once, by the resumed run
    for step in (3, 4):  # the same batches, weights and optimizer state: the same losses
        assert again[step] == pytest.approx(straight[step], rel=1e-4)
    assert "changed since the run started" not in stderr
    write_dataset(data / "train.json", make_samples(data)[::-1])  # new data, from step 5 on
    longer = config.model_copy(update={"max_steps": 6})
    extended, stderr = run(longer, "latest")
    assert extended.steps == 6
    assert sorted(losses(extended.run)) == [1, 2, 3, 4, 5, 6]
    assert "warning: the train split(s) changed since the run started" in stderr
    # Resumed again once complete: no step, final/ kept as it is.
    kept = {p.name: p.stat().st_mtime_ns for p in (extended.run / "final").iterdir()}
    done, stderr = run(longer, "latest")
    assert (done.steps, done.final) == (6, extended.run / "final")
    assert f"train: {extended.run} is complete at step 6 of max_steps 6; nothing" in stderr
    assert "train: step" not in stderr and "resuming" not in stderr
    assert sorted(losses(done.run)) == [1, 2, 3, 4, 5, 6]
    assert rundir.checkpoints(done.run)[-1][0] == 6
    assert {p.name: p.stat().st_mtime_ns for p in (done.run / "final").iterdir()} == kept
    # Stopped in its last step before final/ was saved: final/ is made from the checkpoint.
    shutil.rmtree(done.run / "final")
    remade, stderr = run(longer, "latest")
    assert f"model saved to {done.run / 'final'} (from checkpoint-6)" in stderr
    assert sorted(p.name for p in (remade.run / "final").iterdir()) == sorted(kept)


def test_gradient_checkpointing_and_accumulation(tiny: dict[str, Path], tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    config = run_config(
        tiny["llava-onevision"],
        data,
        tmp_path / "run",
        batch_size=1,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
    )
    result, _ = run(config)
    logged = losses(result.run)
    assert logged[6] < logged[1] - DROP, logged


def test_the_trained_model_is_evaluated_when_there_is_an_eval_split(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import TrainerCallback

    calls: list[tuple[str, Any]] = []

    class FakePeriodicEval(TrainerCallback):
        def __init__(self, run_dir: Path, every_steps: int) -> None:
            calls.append(("periodic", every_steps))

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            calls.append(("saved", state.global_step))

    def fake_evaluate_run(run_dir: Path, *, every_step: int | None = None) -> Path:
        calls.append(("final", run_dir))
        return run_dir / "eval"

    fake = types.ModuleType("fake_evaluate")
    fake.evaluate_run = fake_evaluate_run  # type: ignore[attr-defined]
    fake.PeriodicEval = FakePeriodicEval  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moderator.training.finetune.evaluate", fake)
    data = make_dataset(tmp_path / "data", eval_split=True)
    config = run_config(
        tiny["qwen2-vl"],
        data,
        tmp_path / "run",
        max_steps=4,
        save_steps=100,
        eval={"every_steps": 2},
    )
    result, _ = run(config)
    assert calls == [("periodic", 2), ("saved", 2), ("saved", 4), ("final", result.run)]
    assert result.report == result.run / "eval"
    saved = yaml.safe_load((result.run / rundir.CONFIG_FILE).read_text())
    assert saved["eval"]["enabled"] is True
    assert set(saved["resolved"]["splits"]) == {"train", "eval"}


def test_smoke_test_rationales_never_train_a_real_model(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    samples = make_samples(data)
    samples[0] = dataclasses.replace(samples[0], rationale_smoke_test=True)
    write_dataset(data / "train.json", samples)
    real = tmp_path / "real"
    shutil.copytree(tiny["qwen2-vl"], real)
    (real / MARKER).unlink()
    with pytest.raises(ConfigError, match=r"^dataset: 1 sample\(s\) .* smoke-test model \('s0'\)"):
        run(run_config(real, data, tmp_path / "run"))
    result, stderr = run(run_config(tiny["qwen2-vl"], data, tmp_path / "run2", max_steps=1))
    assert "have smoke-test rationales ('s0')" in stderr
    assert result.steps == 1
