"""Running a fine-tuning job: inputs checked, model prepared, transformers' Trainer run, the
run directory written (rundir.py), the trained model evaluated.

Why transformers' `Trainer` and not TRL's `SFTTrainer`: the guard models are vision-language
models whose examples need the architecture's own image tensors and a loss mask that covers
exactly the JSON answer and its end token. SFTTrainer's value is its text-first data handling
(packing, chat formatting, completion-only masks), which would have to be switched off or
overridden for images, while the plain Trainer takes our collator and labels as they are,
gives the same optimizer, schedule, accumulation, mixed precision, checkpointing and resume,
and needs no dependency beyond the transformers extra (peft only for LoRA).

Order of a run: the configuration's paths, the device and a resumed checkpoint's fit are
checked before anything is loaded (a typo is a one-line error, exit 2); the images of the
splits must all exist and decode; config.yaml is written before the first step, so a crashed run
says what it was.
The first Ctrl-C (or SIGTERM) stops after the running step with a checkpoint (stop.py); a
second one stops at once, and one line says which checkpoint `--resume` would continue from.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from moderator.engine.smoke import MARKER
from moderator.errors import ConfigError, ModeratorError
from moderator.training.finetune import rundir
from moderator.training.finetune.complete import (
    Completion,
    complete_line,
    completion,
    final_from_checkpoint,
)
from moderator.training.finetune.config import RESOLVED, TrainConfig, dump_yaml, effective
from moderator.training.finetune.inputs import Inputs, check_inputs, eval_note
from moderator.training.finetune.resume_config import check_unchanged, resumed_config
from moderator.training.finetune.rundir import FINAL, Resume

if TYPE_CHECKING:
    from moderator.training.finetune.stop import GracefulStop


@dataclass(frozen=True)
class TrainResult:
    """Where a run put its model (None when a signal stopped it first), and its evaluation
    report (None: not evaluated). `stopped` names the signal that stopped the run early."""

    run: Path
    final: Path | None
    steps: int
    report: Path | None
    stopped: str | None = None


def train(
    config: TrainConfig,
    *,
    resume: Resume = None,
    stderr: TextIO | None = None,
    config_file: Path | None = None,
) -> TrainResult:
    """Run the training `config` describes (continuing a checkpoint with `resume`);
    `config_file`, where the configuration came from, goes into the lines that say how to
    resume a stopped run."""
    stream = stderr or sys.stderr
    again = f"moderator train --config {config_file or 'FILE'} --resume"
    inputs = check_inputs(config)
    note = eval_note(config, inputs)
    if note is not None:
        print(note, file=stream)
    run = config.output_dir.expanduser().resolve()
    start = rundir.start_checkpoint(run, resume)
    if start is not None:
        rundir.check_resume_fits(start, config, inputs.architecture)
        before = rundir.read_config(run)
        check_unchanged(
            str(run / rundir.CONFIG_FILE), before, effective(filled(config, inputs), {})
        )
        done = completion(start, config)
        if done is not None:
            return _complete(run, start, done, config, inputs, stream, again)
    check_extra(config)
    from moderator.training.finetune.arguments import check_device
    from moderator.training.finetune.stop import GracefulStop
    from moderator.training.finetune.wiring import build_run  # torch and transformers from here

    check_device(config)
    built = build_run(config, inputs, stream)
    resolved = {**inputs.resolved(), "samples": len(built.dataset), **built.facts}
    if start is not None:
        _resuming(run, start, resolved, stream)
    else:
        rundir.trim_log(run, 0)  # a run stopped before its first checkpoint starts over
    doc = effective(filled(config, inputs), resolved)
    if start is not None:  # what the run started with, only its ends and cadences updated
        doc = resumed_config(rundir.read_config(run), doc)
    rundir.write_config(run, dump_yaml(doc))
    stop = GracefulStop(stream)
    trainer = built.trainer(run, stream, every_steps=_eval_every(config, inputs), stop=stop)
    steps = _fit(trainer, start, stop, run, stream, again)
    if stop.requested:
        print(stopped_line(run, steps, stop.name(), again), file=stream)
        return TrainResult(run, None, steps, None, stop.name())
    final = save_final(built.model, built.processor, run / FINAL, inputs.base)
    if config.method == "full":
        write_full_run_card(run, inputs.base)
    print(f"train: model saved to {final}", file=stream)
    del trainer, built  # the evaluation loads the trained model on its own
    _free_memory()
    report = _evaluate_saved(run, inputs, stream, again)
    return TrainResult(run, final, steps, report)


def _complete(
    run: Path,
    start: Path,
    done: Completion,
    config: TrainConfig,
    inputs: Inputs,
    stream: TextIO,
    again: str,
) -> TrainResult:
    """A resumed run with nothing left to train: no step. RUN/final is made from the
    checkpoint when a signal stopped the run before saving it, and the built-in evaluation is
    run when the run has one that did not finish."""
    from moderator.training.finetune.card import EVAL_DIR

    print(complete_line(run, done), file=stream)
    final = run / FINAL
    if not final.is_dir():
        final = final_from_checkpoint(start, run, inputs.base)
        if config.method == "full":
            write_full_run_card(run, inputs.base)
        print(f"train: model saved to {final} (from {start.name})", file=stream)
    report = run / EVAL_DIR if (run / EVAL_DIR / "compare.md").is_file() else None
    if inputs.eval is not None and report is None:
        check_extra(config)
        print("train: the evaluation of the trained model did not finish: running it", file=stream)
        report = _evaluate_saved(run, inputs, stream, again)
    return TrainResult(run, final, done.step, report)


def _fit(
    trainer: Any, start: Path | None, stop: GracefulStop, run: Path, stream: TextIO, again: str
) -> int:
    """trainer.train() under the stop signals; the optimizer step it ended at. A second
    Ctrl-C gets one line naming the checkpoint to resume from, then goes on up."""
    try:
        with stop.installed():
            output = trainer.train(resume_from_checkpoint=str(start) if start else None)
    except KeyboardInterrupt:
        line = interrupted_line(run, int(trainer.state.global_step), again)
        print(line, file=stream, flush=True)
        raise
    except ModeratorError as exc:  # a sample that cannot be used (an image unreadable now)
        if isinstance(exc, ConfigError):
            raise
        step = int(trainer.state.global_step)
        print(interrupted_line(run, step, again, "stopped by an error"), file=stream, flush=True)
        raise
    except RuntimeError as exc:
        if start is not None and "Error(s) in loading state_dict" in str(exc):
            raise ConfigError(
                f"--resume: {start} does not fit base_model (other layer sizes): "
                f"{str(exc).split(':', 1)[0]}"
            ) from exc
        raise
    return int(output.global_step)


def stopped_line(run: Path, step: int, signal_name: str, again: str) -> str:
    """What a run stopped by a signal says: where it stopped and how to go on."""
    return (
        f"train: stopped by {signal_name} at step {step}; {rundir.CHECKPOINT_PREFIX}{step} is "
        f"saved in {run}: continue with `{again}`"
    )


def interrupted_line(run: Path, step: int, again: str, what: str = "interrupted") -> str:
    """What a run stopped at once (or by an error) says: which checkpoint `--resume`
    continues from."""
    latest = rundir.latest_checkpoint(run)
    if latest is None:
        return (
            f"train: {what} during step {step + 1}, before any checkpoint was saved; "
            "a new run starts over"
        )
    lost = step - rundir.checkpoint_step(latest)
    after = f" (the {lost} step(s) after it are lost)" if lost > 0 else ""
    return (
        f"train: {what} during step {step + 1}; the newest checkpoint is {latest.name}"
        f"{after}: continue from it with `{again}`"
    )


def _drop_peft_readme(directory: Path) -> None:
    """peft saves an empty model-card template beside an adapter; `train merge` writes the real
    card, so the template would only mislead."""
    readme = directory / "README.md"
    if readme.is_file() and "library_name: peft" in readme.read_text(encoding="utf-8"):
        readme.unlink()


def check_extra(config: TrainConfig) -> None:
    """ConfigError when the libraries of the train extra are not installed."""
    needed = ["torch", "transformers", "accelerate"] + (["peft"] if config.method == "lora" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"method: {config.method} needs {', '.join(missing)}, part of the train extra: "
            "pip install 'moderator[train]'"
        )


def filled(config: TrainConfig, inputs: Inputs) -> TrainConfig:
    """`config` with what was left to the inputs decided: the arch, whether to evaluate."""
    evaluation = config.eval.model_copy(update={"enabled": inputs.eval is not None})
    return config.model_copy(update={"arch": inputs.arch, "eval": evaluation})


def save_final(model: Any, processor: Any, final: Path, base: Path) -> Path:
    """RUN/final: the adapter (LoRA) or the whole model, the processor files, and the
    smoke-test marker when the base had one (a tuned random model is still one)."""
    from moderator.training.finetune.model import save_processor

    final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(final)
    _drop_peft_readme(final)
    save_processor(processor, final)
    if (base / MARKER).is_file():
        (final / MARKER).write_bytes((base / MARKER).read_bytes())
    return final


def write_full_run_card(run: Path, base: Path) -> None:
    """RUN/final of a full run is a servable checkpoint: its model card names it (the run's
    name, a revision of its weights) in verdicts and evaluation reports."""
    from moderator.training.finetune.card import CardInputs, write_card

    write_card(run / FINAL, CardInputs(run.name, base, run, run / FINAL, None))


def _free_memory() -> None:
    """Give the training's GPU memory back before the evaluation loads a model."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resuming(run: Path, start: Path, resolved: dict[str, Any], stream: TextIO) -> None:
    """Before a resumed run: the log cut back to the checkpoint's step; a warning when the data
    changed since the run started (allowed: fine-tuning further on new data)."""
    rundir.trim_log(run, rundir.checkpoint_step(start))
    print(f"train: resuming from {start}", file=stream)
    before = (rundir.read_config(run) or {}).get(RESOLVED) or {}
    old, new = before.get("dataset_sha256") or {}, resolved["dataset_sha256"]
    changed = sorted(name for name in new if name in old and old[name] != new[name])
    if changed:
        print(
            f"train: warning: the {', '.join(changed)} split(s) changed since the run started "
            "(another SHA-256); resuming on the new data",
            file=stream,
        )


def _eval_every(config: TrainConfig, inputs: Inputs) -> int | None:
    return config.eval.every_steps if inputs.eval is not None else None


def _evaluate_saved(run: Path, inputs: Inputs, stream: TextIO, again: str) -> Path | None:
    """`evaluate`, saying on Ctrl-C that the model is kept and `--resume` runs it again."""
    try:
        return evaluate(run, inputs)
    except KeyboardInterrupt:
        print(
            f"train: interrupted during the evaluation of the trained model; the model is saved "
            f"in {run / FINAL}: run the evaluation with `{again}`",
            file=stream,
            flush=True,
        )
        raise


def evaluate(run: Path, inputs: Inputs) -> Path | None:
    """The built-in evaluation of the trained model on the eval split (when there is one)."""
    if inputs.eval is None:
        return None
    from moderator.training.finetune.evaluate import evaluate_run

    return evaluate_run(run)
