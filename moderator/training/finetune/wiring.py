"""Putting a run together: settings, samples, images, the prepared model, the Trainer.

The moderator settings (`settings:` in the run configuration, and MODERATOR_* variables) give
the decode limits, the s3.* client for images at s3:// URIs and the tenancy rules the policy
compiler needs; `policies:` overrides policies.dir. The seed is set before the model is
prepared, so LoRA's initial weights are the same on every run with that seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from moderator.engine.smoke import is_smoke_test
from moderator.errors import ConfigError
from moderator.fetch.decode import DecodeLimits
from moderator.settings import load_settings
from moderator.training.dataset import Sample, read_dataset, smoke_test_rationales
from moderator.training.evaluate import ImageSource, default_policy_prompt
from moderator.training.finetune.collate import Collator
from moderator.training.finetune.config import TrainConfig
from moderator.training.finetune.data import ChatEncoder, TrainingSet
from moderator.training.finetune.image_check import check_split_images
from moderator.training.finetune.inputs import Inputs
from moderator.training.finetune.model import Prepared, prepare
from moderator.training.predictions import listed


@dataclass
class BuiltRun:
    """The parts of a run, ready for `trainer()`."""

    config: TrainConfig
    prepared: Prepared
    dataset: TrainingSet
    bf16: bool
    facts: dict[str, Any] = field(default_factory=dict)  # for config.yaml's resolved section

    @property
    def model(self) -> Any:
        return self.prepared.model

    @property
    def processor(self) -> Any:
        return self.prepared.loaded.processor

    def trainer(
        self, run: Any, stream: TextIO, *, every_steps: int | None, stop: Any = None
    ) -> Any:
        """transformers' Trainer over the dataset, logging to `run` and `stream`; `stop` (a
        stop.GracefulStop) saves a checkpoint and stops when a signal asks."""
        from transformers import PrinterCallback, Trainer

        from moderator.training.finetune.arguments import training_arguments
        from moderator.training.finetune.progress import RunLog
        from moderator.training.finetune.schedule import StretchedSchedule

        log = RunLog(
            run,
            stream,
            processor=self.processor,
            save_every=every_steps,
            samples=len(self.dataset),
            stopped=(lambda: stop.requested) if stop is not None else None,
        )
        # The schedule first: the log's first line reports the rate the first step runs at.
        callbacks: list[Any] = [StretchedSchedule(), log] + ([stop] if stop is not None else [])
        if every_steps is not None:
            from moderator.training.finetune.evaluate import PeriodicEval

            callbacks.append(PeriodicEval(run, every_steps))
        trainer = Trainer(
            model=self.model,
            args=training_arguments(self.config, run, bf16=self.bf16),
            train_dataset=self.dataset,
            data_collator=Collator(self.prepared.loaded.pad_token_id),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log to stdout
        return trainer


def build_run(config: TrainConfig, inputs: Inputs, stream: TextIO) -> BuiltRun:
    """Read the samples, check the images of every split the run uses (each read and decoded),
    load and prepare the model."""
    from transformers import set_seed

    from moderator.engine.transformers.load import input_size
    from moderator.training.finetune.arguments import use_bf16

    settings = load_settings(config.settings, {"policies.dir": config.policies})
    samples = read_dataset(inputs.train)
    if not samples:
        raise ConfigError(f"dataset: {inputs.train} holds no samples")
    _check_rationales(samples, inputs, stream)
    images = ImageSource(inputs.train, settings)
    splits = [(inputs.train, samples)]
    if inputs.eval is not None:
        splits.append((inputs.eval, read_dataset(inputs.eval)))
    check_split_images(splits, settings)
    prompt, where = default_policy_prompt(settings.policies.dir, settings.tenancy)
    without = sum(1 for s in samples if not s.prompt)
    if without:
        print(f"train: {without} sample(s) without a prompt use {where}", file=stream)
    unexplained = sum(1 for s in samples if s.rationale is None)
    if unexplained:
        print(
            f"train: warning: {unexplained} sample(s) have no rationale; the model learns to "
            "answer without one (`moderator dataset rationales` writes them)",
            file=stream,
        )
    bf16 = use_bf16(config)
    set_seed(config.seed)
    prepared = prepare(config, inputs, bf16=bf16)
    loaded = prepared.loaded
    size = input_size(loaded)
    dataset = TrainingSet(
        samples,
        ChatEncoder(loaded.processor, loaded.eos_token_ids),
        images,
        default_prompt=prompt,
        limits=DecodeLimits.from_settings(settings.fetch),
        input_size=size,
    )
    facts = {
        "bf16": bf16,
        "input_size": size,
        "parameters": prepared.total,
        "trainable_parameters": prepared.trainable,
        "default_prompt": where if without else None,
    }
    print(
        f"train: {len(samples)} samples, {config.method}, {prepared.trainable:,} of "
        f"{prepared.total:,} parameters trainable, bf16 {'on' if bf16 else 'off'}",
        file=stream,
    )
    if is_smoke_test(inputs.base):
        print(
            "train: SMOKE-TEST base model (random weights): the trained model means nothing",
            file=stream,
        )
    return BuiltRun(config, prepared, dataset, bf16, facts)


def _check_rationales(samples: Sequence[Sample], inputs: Inputs, stream: TextIO) -> None:
    """Rationales a smoke-test model wrote mean nothing: a real model is never trained on
    them (a smoke-test base only makes another smoke-test model, so it may, with a warning)."""
    made_up = smoke_test_rationales(samples)
    if not made_up:
        return
    shown = listed(made_up)
    if not is_smoke_test(inputs.base):
        raise ConfigError(
            f"dataset: {len(made_up)} sample(s) of {inputs.train} have rationales written by a "
            f"smoke-test model ({shown}); they mean nothing: write them with a real model "
            "(`moderator dataset rationales`) before training on them"
        )
    print(
        f"train: warning: {len(made_up)} sample(s) have smoke-test rationales ({shown}); "
        "the base is a smoke-test model too",
        file=stream,
    )
