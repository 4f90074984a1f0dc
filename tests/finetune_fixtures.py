"""Shared material of the fine-tuning tests: tiny checkpoints, a generated dataset directory and
run configurations small enough to train in a second on one CPU thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from moderator.training.dataset import Sample, write_dataset
from moderator.training.finetune.config import TrainConfig, parse_config

ARCHES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl")
O2 = "O2: Violence, Harm, or Cruelty"
NA = "NA: None applying"
PROMPT = "Assess the picture against the policy. O2: Violence, Harm, or Cruelty: no gore."


def make_samples(root: Path, n: int = 2, *, prompt: str | None = PROMPT) -> list[Sample]:
    """n generated images under root/images (even: red, nearly square and Unsafe O2; odd:
    green, wide and Safe: LLaVA-OneVision tiles them differently) and their samples."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        unsafe = i % 2 == 0
        colour = (210, 30, 20) if unsafe else (20, 180, 40)
        size = (48 + i, 44) if unsafe else (120 + i, 40)
        Image.new("RGB", size, colour).save(root / "images" / f"s{i}.png")
        samples.append(
            Sample(
                id=f"s{i}",
                image=f"images/s{i}.png",
                rating="Unsafe" if unsafe else "Safe",
                category=O2 if unsafe else NA,
                rationale="Blood on a knife." if unsafe else "A green field.",
                prompt=prompt,
            )
        )
    return samples


def make_dataset(root: Path, n: int = 2, *, eval_split: bool = False) -> Path:
    """A dataset directory as `moderator dataset build` lays it out: train.json (and
    eval.json), written by moderator's dataset writer."""
    samples = make_samples(root, n)
    write_dataset(root / "train.json", samples)
    if eval_split:
        write_dataset(root / "eval.json", samples[:1])
    return root


def run_config(base: Path, dataset: Path, out: Path, **overrides: Any) -> TrainConfig:
    """A configuration that learns fast: a high constant learning rate, every step logged,
    the whole (two-sample) dataset in each batch, one CPU thread."""
    values: dict[str, Any] = {
        "base_model": str(base),
        "dataset": str(dataset),
        "output_dir": str(out),
        "max_steps": 6,
        "learning_rate": 5e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_steps": 3,
        "device": "cpu",
        "threads": 1,
        "lora": {"r": 16, "alpha": 32, "dropout": 0},
        "eval": {"enabled": False},
    }
    values.update(overrides)
    return parse_config(values, "test")
