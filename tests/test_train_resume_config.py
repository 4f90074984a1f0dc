"""`train --resume` keeps the settings the run started with: a changed one that decides the
training is refused in one line naming the keys, config.yaml is not rewritten with values never
used, and a checkpoint of another run directory is refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from moderator.errors import ConfigError
from moderator.training.finetune import rundir
from moderator.training.finetune.resume_config import (
    changed_keys,
    check_unchanged,
    resumed_config,
)
from tests.finetune_fixtures import make_dataset, run_config
from tests.policy_fixtures import clear_moderator_env

BEFORE = {
    "learning_rate": 2e-4,
    "gradient_accumulation_steps": 2,
    "max_steps": 4,
    "logging_steps": 10,
    "lora": {"r": 16, "alpha": 32},
    "eval": {"every_steps": None},
    "resolved": {"dataset_sha256": {"train": "aa"}},
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def test_settings_that_decide_the_training_are_named_in_one_line() -> None:
    now = {
        **BEFORE,
        "learning_rate": 0.001,
        "gradient_accumulation_steps": 8,
        "lora": {"r": 16, "alpha": 8},
        "new_key": 1,  # not in an older config.yaml: not compared
        "resolved": {},
    }
    assert changed_keys(BEFORE, now) == [
        "learning_rate",
        "gradient_accumulation_steps",
        "lora.alpha",
    ]
    with pytest.raises(ConfigError) as caught:
        check_unchanged("runs/ref/config.yaml", BEFORE, now)
    assert str(caught.value).startswith(
        "train --resume: the run's configuration changed (learning_rate, "
        "gradient_accumulation_steps, lora.alpha): a resumed run keeps the settings it started "
        "with (runs/ref/config.yaml)"
    )


def test_ends_and_cadences_may_change_and_are_recorded() -> None:
    now = {**BEFORE, "max_steps": 8, "logging_steps": 1, "eval": {"every_steps": 2}}
    check_unchanged("c.yaml", BEFORE, now)
    check_unchanged("c.yaml", None, now)  # a run without config.yaml: nothing to compare
    written = resumed_config(BEFORE, {**now, "resolved": {"dataset_sha256": {"train": "bb"}}})
    assert written == {**now, "resolved": BEFORE["resolved"]}  # as the run started


def checkpoint(run: Path, step: int) -> Path:
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / rundir.TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def test_a_checkpoint_of_another_run_directory_is_refused(tmp_path: Path) -> None:
    other = checkpoint(tmp_path / "runs" / "tiny-lora", 2)
    run = tmp_path / "runs" / "ref"
    own = checkpoint(run, 2)
    assert rundir.start_checkpoint(run, own) == own
    with pytest.raises(ConfigError) as caught:
        rundir.start_checkpoint(run, other)
    assert str(caught.value) == (
        f"--resume: {other} is not a checkpoint of output_dir {run}: a run continues only from "
        f"its own checkpoints (set output_dir: {other.parent} to continue that run)"
    )


pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # noqa: E402  # torch checked first
from moderator.training.finetune.trainer import train  # noqa: E402


@pytest.mark.transformers
def test_a_resume_with_another_learning_rate_is_refused_and_config_yaml_kept(
    tmp_path: Path,
) -> None:
    base = make_tiny(tmp_path / "tiny", "qwen2-vl")
    data = make_dataset(tmp_path / "data")
    config = run_config(base, data, tmp_path / "run", max_steps=2, save_steps=2)
    first = train(config, stderr=io.StringIO())
    saved = (first.run / rundir.CONFIG_FILE).read_text()
    changed = config.model_copy(update={"learning_rate": 1e-3, "max_steps": 4})
    with pytest.raises(ConfigError, match=r"configuration changed \(learning_rate\)"):
        train(changed, resume="latest", stderr=io.StringIO())
    assert (first.run / rundir.CONFIG_FILE).read_text() == saved
    longer = config.model_copy(update={"max_steps": 3, "logging_steps": 2})
    again = train(longer, resume="latest", stderr=io.StringIO())
    assert again.steps == 3
    written = yaml.safe_load((first.run / rundir.CONFIG_FILE).read_text())
    before = yaml.safe_load(saved)
    assert (written["max_steps"], written["logging_steps"]) == (3, 2)
    assert written["learning_rate"] == before["learning_rate"]
    assert written["resolved"] == before["resolved"]
