"""Fine-tuning end to end through the command line only, as docs/training.md walks it: a
labelled manifest of generated images -> `moderator dataset build --augment` -> `moderator train
--config` (LoRA, a few steps, tiny Qwen2-VL) -> `moderator train merge` -> `moderator eval
--engine transformers --model MERGED`, whose report names the model as the merged card does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from moderator.cli.main import main
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_predictions import INTERFACE_KEYS

pytestmark = pytest.mark.transformers

REPOSITORY = Path(__file__).resolve().parents[1]
REPORT_KEYS = {*INTERFACE_KEYS, "header"}
"""What an evaluation report's metrics.json must hold (docs/evaluation.md)."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="needs the train extra (peft)")
    pytest.importorskip("xgrammar", reason="needs the transformers extra (xgrammar)")
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them; the bundled policy


def write_manifest(root: Path) -> Path:
    """Four labelled images (two Unsafe O2, two Safe) and manifest.csv naming them."""
    (root / "images").mkdir()
    rows = ["image,rating,category,rationale"]
    for i in range(4):
        unsafe = i % 2 == 0
        colour = (200 + i, 20, 30) if unsafe else (30, 160 + i, 60)
        Image.new("RGB", (64 + 8 * i, 48), colour).save(root / "images" / f"p{i}.png")
        label = "Unsafe,O2,Blood on a blade." if unsafe else "Safe,NA,A quiet meadow."
        rows.append(f"images/p{i}.png,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "manifest.csv"


def test_build_train_merge_and_evaluate_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path)
    shutil.copytree(REPOSITORY / "policies", "policies")  # as in a clone of this repository
    build = ["dataset", "build", str(manifest), "--out", "data", "--policies", "policies"]
    build += ["--augment", "--seed", "7"]
    assert main([*build, "--split", "0.5,0.5,0"]) == 0
    assert main(["model", "make-tiny", "tiny", "--arch", "qwen2-vl"]) == 0
    train = {
        "base_model": "tiny",
        "dataset": "data",
        "output_dir": "runs/acme-lora",
        "method": "lora",
        "max_steps": 2,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-3,
        "device": "cpu",
        "threads": 1,
        "eval": {"enabled": False},  # `moderator eval` below does it
    }
    Path("train.yaml").write_text(yaml.safe_dump(train), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--config", "train.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out == f"final: {tmp_path / 'runs' / 'acme-lora' / 'final'}\n"
    assert "train: step 1/2 (50%)" in err and "train: done, 2 steps in " in err

    assert main(["train", "merge", "runs/acme-lora", "--out", "models/acme"]) == 0
    assert capsys.readouterr().out == "models/acme\n"
    card = json.loads(Path("models/acme/moderator-model.json").read_text(encoding="utf-8"))
    assert card["name"] == "acme-lora" and card["training"]["method"] == "lora"

    settings = {"engine": {"generation": {"max_new_tokens": 48, "rationale_max_chars": 32}}}
    Path("settings.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    evaluate = ["eval", "--dataset", "data/eval.json", "--engine", "transformers"]
    assert main([*evaluate, "--model", "models/acme", "--report", "eval-acme", "--config",
                 "settings.yaml"]) == 0  # fmt: skip
    metrics = json.loads(Path("eval-acme/metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) >= REPORT_KEYS
    assert metrics["n"] == len(json.loads(Path("data/eval.json").read_text(encoding="utf-8")))
    assert metrics["header"]["model"] == card["name"]
    assert metrics["header"]["smoke_test"] is True
