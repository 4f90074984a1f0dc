"""The evaluation built into a training run: the eval command's code on the eval split.

At the end of a run `evaluate_run(RUN)` judges the dataset's eval split (config `eval.split`)
with the trained model, through the same engine, window, metrics and report code as
`moderator eval --engine transformers` (moderator/training/evaluate.py, metrics.py, report.py):

    RUN/merged/          a LoRA run's adapter folded into its base (merge.py), with its card
    RUN/eval/            the trained model's report (metrics.json, report.md, report.html, ...)
    RUN/eval-base/       the base model's report on the same samples (made once per base)
    RUN/eval/compare.md  `moderator eval compare RUN/eval-base RUN/eval`: base (A) against the
                         trained model (B), and the card's evaluation section

A full fine-tuning run's RUN/final is evaluated as it is. With `eval.every_steps: N` the
`PeriodicEval` callback evaluates each checkpoint-N the Trainer saves into RUN/eval/step-N/
(a LoRA checkpoint is merged into a scratch directory first, removed afterwards).

The engine settings are the run's `settings` file (engine.generation.*, fetch.*, s3.*), with
engine.kind transformers, the model, the run's device and image caps, and `policies` (the
default prompt for samples without one) set from the run's config.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from moderator.engine.smoke import CARD, is_smoke_test
from moderator.errors import ConfigError
from moderator.settings import Settings, load_settings
from moderator.training.dataset import Sample, read_dataset
from moderator.training.finetune.card import (
    BASE_EVAL_DIR,
    EVAL_DIR,
    STEP_PREFIX,
    adapter_digest,
    read_card,
    refresh_evaluation,
)
from moderator.training.finetune.config import TrainConfig, load_config
from moderator.training.finetune.inputs import sha256_file, split_file
from moderator.training.finetune.merge import merge_lora
from moderator.training.finetune.rundir import ADAPTER_CONFIG, CHECKPOINT_PREFIX, CONFIG_FILE, FINAL
from moderator.training.report import (
    PREDICTIONS_FILE,
    compare,
    read_metrics,
    write_compare,
    write_report,
)

MERGED = "merged"
CACHE_KEY = "base_cache_key"  # in the base report's header: what it was made from


def evaluate_run(
    run_dir: Path, *, every_step: int | None = None, stream: TextIO | None = None
) -> Path | None:
    """Evaluate the run's trained model (or, with `every_step`, its checkpoint of that step) on
    the eval split and compare it with the base model; return the report directory, or None
    when the run has no evaluation (`eval.enabled: false`, or no eval split)."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    dataset = eval_split(config)
    if dataset is None:
        return None
    progress = stream if stream is not None else sys.stderr
    samples = read_dataset(dataset)
    if not samples:
        raise ConfigError(f"eval.split: {dataset} holds no samples")
    base_report = _base_report(run_dir, config, dataset, samples, progress)
    if every_step is None:
        model, report, scratch = final_model(run_dir, progress), run_dir / EVAL_DIR, None
    else:
        report = run_dir / EVAL_DIR / f"{STEP_PREFIX}{every_step}"
        model, scratch = _step_model(run_dir, every_step, progress)
    named = run_dir / f"{CHECKPOINT_PREFIX}{every_step}" if every_step is not None else model
    try:
        _evaluate(model, config, dataset, samples, report, progress, {}, named=named)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    comparison = compare(base_report, report)
    write_compare(report, comparison)
    verdict = str(comparison["verdict"]["reason"]).rstrip(".")
    print(
        f"eval: the base model (A) against the trained one (B): {verdict} "
        f"({report / 'compare.md'})",
        file=progress,
    )
    if every_step is None and (model / CARD).is_file():
        refresh_evaluation(model, run_dir)  # the card (RUN/merged, a full run's final) shows it
    return report


def eval_split(config: TrainConfig) -> Path | None:
    """The eval split's file, or None when the run does not evaluate."""
    if config.eval.enabled is False:
        return None
    dataset = config.dataset.expanduser()
    found = split_file(dataset, config.eval.split) if dataset.is_dir() else None
    if found is None and config.eval.enabled:
        raise ConfigError(f"eval.split: {dataset} has no {config.eval.split} split")
    return found


class PeriodicEval(TrainerCallback):
    """Evaluates the checkpoint the Trainer has just saved, every `every_steps` steps, into
    RUN/eval/step-N/ (add it to the Trainer's callbacks; runs on the main process only)."""

    def __init__(self, run_dir: Path, every_steps: int) -> None:
        if every_steps < 1:
            raise ConfigError(f"eval.every_steps must be at least 1, got {every_steps}")
        self.run_dir = Path(run_dir)
        self.every_steps = every_steps
        self.reports: list[Path] = []

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> TrainerControl:
        step = int(state.global_step)
        if state.is_world_process_zero and step > 0 and step % self.every_steps == 0:
            report = evaluate_run(self.run_dir, every_step=step)
            if report is not None:
                self.reports.append(report)
        return control


# -- the models ----------------------------------------------------------------------------------


def final_model(run: Path, progress: TextIO | None = None) -> Path:
    """RUN/final for a full run; a LoRA run's adapter merged into RUN/merged (kept while its
    card names the same adapter). A merge is announced on `progress`: it loads the base."""
    final = run / FINAL
    if not final.is_dir():
        raise ConfigError(f"train eval: {run} has no {FINAL}/ (the run has not finished)")
    if not (final / ADAPTER_CONFIG).is_file():
        return final
    merged = run / MERGED
    if (merged / CARD).is_file():  # merged before (an earlier evaluation): reuse it if current
        training = read_card(merged).get("training") or {}
        if training.get("adapter_sha256") == adapter_digest(final):
            return merged
    _merging(final, merged, progress)
    return merge_lora(run, merged, name=run.name)


def _merging(adapter: Path, out: Path, progress: TextIO | None) -> None:
    if progress is not None:
        print(f"eval: merging the adapter {adapter} into {out} for the evaluation", file=progress)


def _step_model(run: Path, step: int, progress: TextIO | None = None) -> tuple[Path, Path | None]:
    """The checkpoint of `step` as a loadable model, and the scratch directory to remove."""
    checkpoint = run / f"{CHECKPOINT_PREFIX}{step}"
    if not checkpoint.is_dir():
        raise ConfigError(f"train eval: {run} has no {checkpoint.name}/")
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        return checkpoint, None
    scratch = run / f".eval-{STEP_PREFIX}{step}"
    _merging(checkpoint, scratch, progress)
    return merge_lora(checkpoint, scratch, name=f"{run.name}-{STEP_PREFIX}{step}"), scratch


def _base_report(
    run: Path, config: TrainConfig, dataset: Path, samples: list[Sample], progress: TextIO
) -> Path:
    """RUN/eval-base: the base model's report, made again only when the base, the eval split
    or the run's evaluation settings changed."""
    report = run / BASE_EVAL_DIR
    base = config.base_model.expanduser().resolve()
    key = base_cache_key(base, config, dataset)
    if (report / "metrics.json").is_file():
        header = read_metrics(report).get("header") or {}
        if header.get(CACHE_KEY) == key:
            return report
    _evaluate(base, config, dataset, samples, report, progress, {CACHE_KEY: key})
    return report


def base_cache_key(base: Path, config: TrainConfig, dataset: Path) -> str:
    """A digest of what a base report depends on: the base's files (names, sizes, times),
    the eval split's bytes and the evaluation settings."""
    digest = hashlib.sha256(str(base).encode())
    for path in sorted(p for p in base.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    digest.update(sha256_file(dataset).encode())
    if config.settings is not None and config.settings.expanduser().is_file():
        digest.update(sha256_file(config.settings.expanduser()).encode())
    digest.update(config.image.model_dump_json().encode() + config.device.encode())
    digest.update(str(config.policies).encode())
    return digest.hexdigest()[:16]


# -- one evaluation ------------------------------------------------------------------------------


def eval_settings(config: TrainConfig, model: Path) -> Settings:
    """The run's settings file with the transformers engine on `model` and the run's device,
    image caps and policy directory."""
    overrides: dict[str, Any] = {"engine.kind": "transformers", "engine.model": str(model)}
    if config.device != "auto":  # else the settings file's device (default: auto)
        overrides["engine.transformers.device"] = config.device
    if config.image.max_image_tiles is not None:
        overrides["engine.transformers.max_image_tiles"] = config.image.max_image_tiles
    if config.image.max_pixels is not None:
        overrides["engine.transformers.max_pixels"] = config.image.max_pixels
    if config.policies is not None:
        overrides["policies.dir"] = str(config.policies)
    settings_file = config.settings.expanduser() if config.settings is not None else None
    return load_settings(settings_file, overrides)


def _evaluate(
    model: Path,
    config: TrainConfig,
    dataset: Path,
    samples: list[Sample],
    report: Path,
    progress: TextIO,
    extra: dict[str, Any],
    *,
    named: Path | None = None,
) -> None:
    """`moderator eval --dataset DATASET --engine transformers --model MODEL --report REPORT`;
    `named` is the model as the lines and the report name it (a checkpoint, not the scratch
    directory it was merged into for the evaluation and that is removed afterwards)."""
    shown = named if named is not None else model
    from moderator.training.evaluate import ImageSource, default_policy_prompt, evaluate_engine
    from moderator.training.metrics import compute
    from moderator.training.predictions import (
        error_counts,
        missing_images,
        not_found,
        write_predictions,
    )

    settings = eval_settings(config, model)
    images = ImageSource(dataset, settings)
    missing = missing_images(dataset, samples)
    if missing:
        raise ConfigError(f"eval: {not_found(missing)}")
    prompt, _ = default_policy_prompt(settings.policies.dir, settings.tenancy)
    print(f"eval: {shown} on {dataset} -> {report}", file=progress)
    run = evaluate_engine(samples, settings, images, prompt, progress)
    if run.model.smoke_test:
        print(f"eval: SMOKE-TEST model ({shown}): the metrics are not meaningful", file=progress)
    report.mkdir(parents=True, exist_ok=True)
    write_predictions(report / PREDICTIONS_FILE, run.predictions)
    header = {
        "dataset": str(dataset),
        "samples": len(samples),
        "source": "engine",
        "engine": run.model.engine,
        "model": run.model.name,
        "revision": run.model.revision,
        "model_path": str(shown),
        "smoke_test": run.model.smoke_test or is_smoke_test(model),
        "errors": error_counts(run.predictions),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
    metrics = compute(samples, run.predictions, elapsed_s=run.stats.seconds)
    write_report(report, metrics, samples, run.predictions, header, kept=[PREDICTIONS_FILE])
