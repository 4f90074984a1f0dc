"""Training on a CUDA device: a few LoRA steps of a random-weight model of the released 0.5B
LLaVA-OneVision size (dims FULL: Qwen2-0.5B text model, SigLIP-so400m tower), in bfloat16.

It runs `moderator train`'s own code (moderator/training/finetune/trainer.py) and prints one
line per run for docs/training.md: seconds per optimizer step, samples per second, the time per
1,000 samples that follows, and the peak GPU memory torch allocated. The weights are random, so
only the cost is meaningful; the test checks that the run finishes with finite losses and
writes its adapter.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.training.dataset import Sample, write_dataset
from tests.gpu.conftest import need_modules

pytestmark = [pytest.mark.gpu, pytest.mark.transformers]

STEPS = 12  # the first steps pay for kernel selection: the mean over 12 is near the steady one
BATCH = 2
O1 = "O1: Hate, Humiliation, Harassment"
NA = "NA: None applying"
RATIONALE = "The image shows a plain coloured field with no people, symbols or text in it."


def make_dataset(root: Path, n: int) -> Path:
    """n images of 384x384 (one LLaVA-OneVision tile plus the base image), labelled, with a
    rationale each, in DIR/train.json."""
    (root / "images").mkdir(parents=True)
    samples = []
    for i in range(n):
        unsafe = i % 2 == 0
        colour = (200, 30 + 10 * i, 40) if unsafe else (30, 180, 20 + 10 * i)
        Image.new("RGB", (384, 384), colour).save(root / "images" / f"s{i}.png")
        samples.append(
            Sample(
                id=f"s{i}",
                image=f"images/s{i}.png",
                rating="Unsafe" if unsafe else "Safe",
                category=O1 if unsafe else NA,
                rationale=RATIONALE,
            )
        )
    write_dataset(root / "train.json", samples)
    return root


def run_config(tmp_path: Path, base: Path, data: Path, **extra: Any) -> Any:
    from moderator.training.finetune.config import parse_config

    doc = {
        "base_model": str(base),
        "dataset": str(data),
        "output_dir": str(tmp_path / "run"),
        "method": "lora",
        "max_steps": STEPS,
        "batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "bf16": True,
        "device": "cuda",
        "logging_steps": 1,
        "save_steps": 10_000,
        "eval": {"enabled": False},
        **extra,
    }
    return parse_config(doc, "gpu test")


def test_lora_steps_at_the_released_05b_size(tmp_path: Path) -> None:
    need_modules("transformers", "peft", "xgrammar")
    import torch

    from moderator.dev.tiny.checkpoint import write_checkpoint
    from moderator.dev.tiny.dims import FULL
    from moderator.training.finetune.rundir import read_log
    from moderator.training.finetune.trainer import train

    dims = FULL["llava-onevision"]
    base = write_checkpoint(tmp_path / "base", dims, dtype="bfloat16", device="cuda")
    data = make_dataset(tmp_path / "data", 16)
    config = run_config(tmp_path, base, data)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = train(config, stderr=sys.stderr)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30

    log = read_log(result.run)
    losses = [entry["loss"] for entry in log if "loss" in entry]
    runtime = next(entry["train_runtime"] for entry in log if "train_runtime" in entry)
    per_step = runtime / result.steps
    per_1k = 1000 / BATCH * per_step
    print(
        f"\ntrain-gpu: {torch.cuda.get_device_name()} {dims.name} LoRA r{config.lora.r} bf16 "
        f"batch {BATCH}: {per_step:.3f} s/step, {BATCH / per_step:.1f} samples/s, "
        f"{per_1k:.0f} s per 1k samples, peak {peak_gib:.2f} GiB allocated",
        file=sys.stderr,
    )
    assert result.steps == STEPS
    assert len(losses) >= STEPS and all(math.isfinite(loss) for loss in losses)
    assert result.final is not None
    adapter = json.loads((result.final / "adapter_config.json").read_text())
    assert adapter["r"] == config.lora.r
