"""The Trainer's arguments from a run configuration, and the choice of bfloat16.

`warmup_ratio` becomes whole warm-up steps, rounded down, when `max_steps` is set (transformers
rounds a fractional `warmup_steps` up, and its first warm-up step has a learning rate of 0: a run
of a few steps would spend one of them learning nothing); with `epochs` it is passed as the
fractional `warmup_steps`. Activation
(gradient) checkpointing runs non-reentrant, which lets gradients reach LoRA adapters and
trainable layers behind the frozen vision tower without marking the inputs as needing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.training.finetune.config import TrainConfig


def check_device(config: TrainConfig) -> None:
    """ConfigError when `device: cuda` is asked for where there is no CUDA device."""
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but no CUDA device is available here")


def use_bf16(config: TrainConfig) -> bool:
    """bfloat16 mixed precision: as configured; `auto` means where CUDA supports it."""
    import torch

    check_device(config)
    cuda = config.device != "cpu" and torch.cuda.is_available()
    if config.bf16 == "auto":
        return bool(cuda and torch.cuda.is_bf16_supported())
    return bool(config.bf16)


def training_arguments(config: TrainConfig, run: Path, *, bf16: bool) -> Any:
    """The Trainer's arguments for `config`, writing into `run`."""
    from transformers import TrainingArguments

    warmup: float = config.warmup_ratio  # below 1: a share of the steps
    if config.max_steps is not None:
        warmup = int(config.warmup_ratio * config.max_steps)
    return TrainingArguments(
        output_dir=str(run),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,  # the time per step and an ETA without waiting logging_steps
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=config.device == "cpu",
        dataloader_num_workers=config.dataloader_workers,
        dataloader_pin_memory=False,
        remove_unused_columns=False,  # the collator's image tensors go to forward() as they are
        report_to="none",
        disable_tqdm=True,  # progress.py prints the progress line
    )
