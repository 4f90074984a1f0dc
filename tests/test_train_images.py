"""The images of every split a run uses are read and decoded before the model is loaded: a
corrupt one is refused in one line (exit 2), not found at step 16; a sample that fails in the
middle of a run says which checkpoint `--resume` continues from."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.errors import ConfigError, ModeratorError
from moderator.settings import Settings
from moderator.training.dataset import read_dataset
from moderator.training.finetune.image_check import check_split_images
from tests.finetune_fixtures import make_dataset
from tests.policy_fixtures import clear_moderator_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_images_of_every_split_are_named_in_one_line(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 3, eval_split=True)
    truncate(data / "images" / "s0.png")
    (data / "images" / "s2.png").write_bytes(b"not an image")
    train, evaluation = data / "train.json", data / "eval.json"
    splits = [(train, read_dataset(train)), (evaluation, read_dataset(evaluation))]
    with pytest.raises(ConfigError) as caught:
        check_split_images(splits, Settings())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("dataset: 3 image(s) cannot be used: train.json sample 's0' (")
    assert "eval.json sample 's0' (images/s0.png)" in message
    assert "sample 's2' (images/s2.png)" in message


def test_good_images_pass_and_missing_ones_come_first(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 2)
    train = data / "train.json"
    check_split_images([(train, read_dataset(train))], Settings())
    (data / "images" / "s1.png").unlink()
    with pytest.raises(
        ConfigError, match=r"^dataset: 1 image file\(s\) not found: \S+ sample 's1'"
    ):
        check_split_images([(train, read_dataset(train))], Settings())


pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # noqa: E402  # torch checked first
from moderator.training.finetune import data as finetune_data  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-images") / "qwen2-vl", "qwen2-vl")


def write_config(path: Path, base: Path, data: Path, out: Path, **extra: object) -> Path:
    lines = [
        f"base_model: {base}",
        f"dataset: {data}",
        f"output_dir: {out}",
        "max_steps: 4",
        "save_steps: 2",
        "batch_size: 2",
        "gradient_accumulation_steps: 1",
        "logging_steps: 1",
        "device: cpu",
        "threads: 1",
        "lora: {r: 4, alpha: 8, dropout: 0}",
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.transformers
def test_train_refuses_a_corrupt_image_before_the_model_loads(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", 2)
    truncate(data / "images" / "s1.png")
    config = write_config(tmp_path / "train.yaml", base, data, tmp_path / "run")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "dataset: 1 image(s) cannot be used: train.json sample 's1' (images/s1.png)" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing started


@pytest.mark.transformers
def test_a_sample_failing_mid_run_names_the_checkpoint_to_resume_from(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    make_dataset(data, 2)
    drawn = {"n": 0}
    getitem = finetune_data.TrainingSet.__getitem__

    def failing(self: finetune_data.TrainingSet, index: int) -> object:
        drawn["n"] += 1
        if drawn["n"] > 6:  # steps 1 to 3 draw six samples; step 4 fails
            raise ModeratorError("sample s0: image images/s0.png: corrupt_image: gone bad")
        return getitem(self, index)

    monkeypatch.setattr(finetune_data.TrainingSet, "__getitem__", failing)
    from moderator.training.finetune.config import load_config
    from moderator.training.finetune.trainer import train

    config = load_config(write_config(tmp_path / "train.yaml", base, data, tmp_path / "run"))
    stderr = io.StringIO()
    with pytest.raises(ModeratorError, match="gone bad"):
        train(config, stderr=stderr, config_file=Path("train.yaml"))
    assert (
        "train: stopped by an error during step 4; the newest checkpoint is checkpoint-2 "
        "(the 1 step(s) after it are lost): continue from it with "
        "`moderator train --config train.yaml --resume`"
    ) in stderr.getvalue()
