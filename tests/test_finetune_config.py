"""The run configuration of `moderator train` and the checks of what it names, without torch:
unknown keys, bad values, missing files, architecture mismatches, the run directory's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moderator.errors import ConfigError
from moderator.training.finetune import rundir
from moderator.training.finetune.config import (
    LEARNING_RATE,
    PROJECTIONS,
    dump_yaml,
    effective,
    load_config,
    parse_config,
)
from moderator.training.finetune.inputs import check_inputs, sha256_file
from tests.finetune_fixtures import make_dataset


def fake_checkpoint(path: Path, architecture: str = "Qwen2VLForConditionalGeneration") -> Path:
    """A directory whose config.json names `architecture` (enough for the checks)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    for name in ("model.safetensors", "tokenizer.json"):
        (path / name).write_bytes(b"")
    return path


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "base": fake_checkpoint(tmp_path / "base"),
        "data": make_dataset(tmp_path / "data", eval_split=True),
        "out": tmp_path / "run",
    }


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def minimal(paths: dict[str, Path], **extra: object) -> dict[str, object]:
    return {
        "base_model": str(paths["base"]),
        "dataset": str(paths["data"]),
        "output_dir": str(paths["out"]),
        **extra,
    }


def test_the_three_required_keys_and_defaults(tmp_path: Path, paths: dict[str, Path]) -> None:
    config = load_config(config_file(tmp_path, yaml.safe_dump(minimal(paths))))
    assert config.method == "lora"
    assert config.lora.target_modules == PROJECTIONS
    assert config.freeze_vision is True
    assert config.bf16 == "auto"
    assert config.lr == LEARNING_RATE["lora"]
    assert parse_config(minimal(paths, method="full"), "x").lr == LEARNING_RATE["full"]
    assert parse_config(minimal(paths, learning_rate=1e-3), "x").lr == 1e-3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"epoch": 3}, "train config F: epoch: unknown key; did you mean 'epochs'?"),
        ({"lora": {"rank": 8}}, "train config F: lora.rank: unknown key; the keys here are "),
        ({"eval": {"every": 5}}, "train config F: eval.every: unknown key"),
        ({"method": "qlora"}, "train config F: method: Input should be 'lora' or 'full'"),
        ({"lora": {"r": 0}}, "train config F: lora.r: Input should be greater than or equal to 1"),
        ({"bf16": "sometimes"}, "train config F: bf16: should be true, false or auto"),
        ({"lora": 8}, "train config F: lora: should be a mapping of keys"),
        ({"eval": [1]}, "train config F: eval: should be a mapping of keys"),
        ({"arch": "llama"}, "train config F: arch: Input should be"),
        ({"max_steps": 0}, "train config F: max_steps: Input should be greater than or equal"),
    ],
)
def test_bad_keys_and_values_are_one_line_naming_the_key(
    paths: dict[str, Path], extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(paths, **extra), "F")
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_every_problem_is_counted(paths: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(paths, epoch=3, epochz=4, max_steps=0), "F")
    assert str(caught.value).endswith(" (and 2 more problems)")


def test_a_missing_required_key_and_a_broken_file(tmp_path: Path, paths: dict[str, Path]) -> None:
    doc = minimal(paths)
    del doc["dataset"]
    with pytest.raises(ConfigError, match=r"^train config F: dataset: required$"):
        parse_config(doc, "F")
    with pytest.raises(ConfigError, match=r"train\.yaml line 2: invalid YAML: \S.*$"):
        load_config(config_file(tmp_path, "method: lora\n  bad: [\n"))
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(config_file(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_inputs_are_resolved_with_hashes(paths: dict[str, Path]) -> None:
    inputs = check_inputs(parse_config(minimal(paths), "x"))
    assert inputs.arch == "qwen2-vl"
    assert inputs.train == paths["data"].resolve() / "train.json"
    assert inputs.eval == paths["data"].resolve() / "eval.json"
    resolved = inputs.resolved()
    assert resolved["dataset_sha256"]["train"] == sha256_file(paths["data"] / "train.json")
    assert set(resolved["dataset_sha256"]) == {"train", "eval"}


def test_evaluation_follows_the_eval_split(tmp_path: Path, paths: dict[str, Path]) -> None:
    assert check_inputs(parse_config(minimal(paths, eval={"enabled": False}), "x")).eval is None
    bare = make_dataset(tmp_path / "bare")
    assert check_inputs(parse_config(minimal(paths, dataset=str(bare)), "x")).eval is None
    with pytest.raises(ConfigError, match=r"^eval\.split: .* has no eval split"):
        check_inputs(parse_config(minimal(paths, dataset=str(bare), eval={"enabled": True}), "x"))
    one_file = parse_config(minimal(paths, dataset=str(bare / "train.json")), "x")
    assert check_inputs(one_file).train == (bare / "train.json").resolve()


def test_an_eval_split_asked_for_must_exist_and_hold_samples(
    tmp_path: Path, paths: dict[str, Path]
) -> None:
    from moderator.training.finetune.inputs import eval_note

    with pytest.raises(ConfigError, match=r"^eval\.split: .*data has no nosuch split to evaluate"):
        check_inputs(parse_config(minimal(paths, eval={"split": "nosuch"}), "x"))
    one_file = minimal(paths, dataset=str(paths["data"] / "train.json"), eval={"split": "eval"})
    with pytest.raises(ConfigError, match=r"^eval\.split: dataset .* is one file, with no eval"):
        check_inputs(parse_config(one_file, "x"))
    off = parse_config(minimal(paths, eval={"split": "nosuch", "enabled": False}), "x")
    assert check_inputs(off).eval is None and eval_note(off, check_inputs(off)) is None
    (paths["data"] / "eval.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"^eval\.split: .*eval\.json holds no samples; set"):
        check_inputs(parse_config(minimal(paths), "x"))
    bare = parse_config(minimal(paths, dataset=str(make_dataset(tmp_path / "bare"))), "x")
    note = eval_note(bare, check_inputs(bare))
    assert note is not None and note.startswith("train: note: ")
    assert note.endswith("bare has no eval split (eval.json or .jsonl): no evaluation will run")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "missing-data"}, r"^dataset: no dataset directory or file at .*missing-data$"),
        ({"train_split": "training"}, r"^dataset: .* has no training split"),
        ({"base_model": "no-such-model"}, r"^base_model: no checkpoint directory at .*no-such"),
        ({"policies": "no-policies"}, r"^policies: no-policies is not a directory$"),
        ({"settings": "none.yaml"}, r"^settings: no settings file at none\.yaml$"),
    ],
)
def test_missing_files_are_named(
    paths: dict[str, Path],
    change: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_inputs(parse_config(minimal(paths, **change), "x"))


def test_architecture_mismatch_and_unsupported_models(
    tmp_path: Path, paths: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_inputs(parse_config(minimal(paths, arch="llava-onevision"), "x"))
    assert str(caught.value) == (
        f"arch: llava-onevision, but base_model {paths['base'].resolve()}/config.json names "
        "Qwen2VLForConditionalGeneration (qwen2-vl)"
    )
    llama = fake_checkpoint(tmp_path / "llama", "LlamaForCausalLM")
    with pytest.raises(ConfigError, match=r"^base_model: .*llama is a LlamaForCausalLM; moderator"):
        check_inputs(parse_config(minimal(paths, base_model=str(llama)), "x"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^base_model: .*empty has no config\.json"):
        check_inputs(parse_config(minimal(paths, base_model=str(empty)), "x"))


def test_the_effective_config_round_trips(paths: dict[str, Path]) -> None:
    config = parse_config(minimal(paths, method="full"), "x")
    doc = effective(config, {"base_model": "/abs/base"})
    assert doc["learning_rate"] == LEARNING_RATE["full"]
    assert doc["output_dir"] == str(paths["out"].resolve())
    assert doc["lora"]["r"] == 16
    assert list(doc)[-1] == "resolved"
    again = parse_config(yaml.safe_load(dump_yaml(doc)), "config.yaml")  # resolved: skipped
    assert again.model_dump(mode="json") == {k: v for k, v in doc.items() if k != "resolved"}


def _checkpoint(run: Path, step: int) -> Path:
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / rundir.TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def test_a_new_run_needs_a_free_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert rundir.start_checkpoint(run, None) is None
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert rundir.start_checkpoint(run, None) is None
    _checkpoint(run, 3)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint-3\); continue it"):
        rundir.start_checkpoint(run, None)


def test_resume_takes_the_latest_checkpoint_or_the_one_given(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="holds no checkpoint-N directory"):
        rundir.start_checkpoint(run, "latest")
    for step in (9, 10, 2):
        _checkpoint(run, step)
    assert rundir.start_checkpoint(run, "latest") == run / "checkpoint-10"
    assert rundir.start_checkpoint(run, run / "checkpoint-2") == (run / "checkpoint-2").resolve()
    (run / "checkpoint-11").mkdir()  # no trainer state: not a checkpoint
    with pytest.raises(ConfigError, match="is not a training checkpoint"):
        rundir.start_checkpoint(run, run / "checkpoint-11")
    # A save cut short (no trainer_state.json, written last) is passed over by --resume.
    assert rundir.start_checkpoint(run, "latest") == run / "checkpoint-10"
    cut = tmp_path / "cut"
    (cut / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no checkpoint-N .*\(only checkpoints whose saving"):
        rundir.start_checkpoint(cut, "latest")
    with pytest.raises(ConfigError, match="no checkpoint directory at"):
        rundir.start_checkpoint(run, tmp_path / "elsewhere")
    # A checkpoint whose weights are gone is passed over too, and refused when named.
    (run / "checkpoint-10" / "adapter_model.safetensors").unlink()
    assert rundir.start_checkpoint(run, "latest") == run / "checkpoint-9"
    with pytest.raises(ConfigError, match=r"checkpoint-10 holds no weights \(adapter_model"):
        rundir.start_checkpoint(run, run / "checkpoint-10")


def test_a_checkpoint_at_the_runs_end_completes_it(tmp_path: Path, paths: dict[str, Path]) -> None:
    from moderator.training.finetune.complete import completion

    checkpoint = _checkpoint(tmp_path / "run", 4)
    state = {"global_step": 4, "max_steps": 4, "epoch": 2.0}
    (checkpoint / rundir.TRAINER_STATE).write_text(json.dumps(state))
    done = completion(checkpoint, parse_config(minimal(paths, max_steps=4), "x"))
    assert done is not None and (done.step, done.end) == (4, "max_steps 4")
    assert completion(checkpoint, parse_config(minimal(paths, max_steps=3), "x")) is not None
    assert completion(checkpoint, parse_config(minimal(paths, max_steps=5), "x")) is None
    # Without max_steps: the epochs asked for, against the epoch the checkpoint reached.
    done = completion(checkpoint, parse_config(minimal(paths, epochs=2), "x"))
    assert done is not None and done.end == "epochs 2 (epoch 2)"
    assert completion(checkpoint, parse_config(minimal(paths, epochs=3), "x")) is None
    (checkpoint / rundir.TRAINER_STATE).write_text(json.dumps({"global_step": 4}))
    assert completion(checkpoint, parse_config(minimal(paths, epochs=1), "x")) is None


def test_a_resumed_run_drops_the_log_after_its_checkpoint(tmp_path: Path) -> None:
    lines = [{"step": n, "loss": 1.0 / n} for n in (1, 2, 3, 4)]
    (tmp_path / rundir.LOG_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    rundir.trim_log(tmp_path, 2)
    assert [entry["step"] for entry in rundir.read_log(tmp_path)] == [1, 2]


def test_a_missing_library_of_the_train_extra_is_named(
    paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from moderator.training.finetune.trainer import check_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    check_extra(parse_config(minimal(paths, method="full"), "x"))  # full: no peft needed
    with pytest.raises(ConfigError, match=r"^method: lora needs peft, part of the train extra: "):
        check_extra(parse_config(minimal(paths), "x"))


def test_an_output_dir_behind_a_file_is_named(tmp_path: Path, paths: dict[str, Path]) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    for out, says in (
        (blocker, f"{blocker} exists and is not a directory"),
        (blocker / "run", f"cannot create {blocker / 'run'}: {blocker} is not a directory"),
    ):
        with pytest.raises(ConfigError) as caught:
            check_inputs(parse_config(minimal(paths, output_dir=str(out)), "x"))
        assert str(caught.value) == f"output_dir: {says}"


def _lora_checkpoint(run: Path, architecture: str, r: int = 16) -> Path:
    """A LoRA checkpoint of a run whose config.yaml records `architecture`."""
    checkpoint = _checkpoint(run, 2)
    (checkpoint / rundir.ADAPTER_CONFIG).write_text(json.dumps({"r": r}))
    rundir.write_config(run, yaml.safe_dump({"resolved": {"architecture": architecture}}))
    return checkpoint


def test_a_checkpoint_must_fit_the_run(tmp_path: Path, paths: dict[str, Path]) -> None:
    qwen, ov = "Qwen2VLForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"
    lora = parse_config(minimal(paths), "x")
    full = parse_config(minimal(paths, method="full"), "x")
    adapter = _lora_checkpoint(tmp_path / "lora-run", qwen)
    rundir.check_resume_fits(adapter, lora, qwen)  # fits: no error
    problems = [
        (adapter, full, qwen, f"{adapter} is a LoRA checkpoint, but method is full"),
        (adapter, lora, ov, f"{adapter} was trained from a {qwen}, but base_model is a {ov}"),
        (
            _lora_checkpoint(tmp_path / "r8", qwen, r=8),
            lora,
            qwen,
            "has LoRA rank 8, but lora.r is 16",
        ),
    ]
    model = fake_checkpoint(_checkpoint(tmp_path / "full-run", 2), ov)
    rundir.check_resume_fits(model, full, ov)
    problems += [
        (model, lora, ov, f"{model} is a full fine-tuning checkpoint, but method is lora"),
        (model, full, qwen, f"{model} was trained from a {ov}, but base_model is a {qwen}"),
    ]
    for checkpoint, config, architecture, message in problems:
        with pytest.raises(ConfigError) as caught:
            rundir.check_resume_fits(checkpoint, config, architecture)
        assert str(caught.value).startswith("--resume: ")
        assert message in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "warm_up_of_1000", "first_lr"),
    [
        ({"max_steps": 4}, 0, 1.0),  # 0.03 x 4 steps rounds down: the first step learns
        ({"max_steps": 1000}, 30, 0.0),
        ({"epochs": 2}, 30, 0.0),  # the share, as transformers counts it from the steps
    ],
)
def test_warm_up_steps_round_down_so_that_a_short_run_starts_learning_at_once(
    paths: dict[str, Path], extra: dict[str, object], warm_up_of_1000: int, first_lr: float
) -> None:
    import torch
    from transformers import get_scheduler

    from moderator.training.finetune.arguments import training_arguments

    config = parse_config(minimal(paths, warmup_ratio=0.03, **extra), "train.yaml")
    args = training_arguments(config, paths["out"], bf16=False)
    total = config.max_steps or 1000
    steps = args.get_warmup_steps(total)
    assert steps == (warm_up_of_1000 if total == 1000 else 0)
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=steps, num_training_steps=total)
    assert schedule.get_last_lr()[0] == pytest.approx(first_lr)  # step 1's rate, as a share
