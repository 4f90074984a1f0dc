"""The run's log: RUN/log.jsonl and a progress line on stderr for every logged step.

Each Trainer log (after the first optimizer step, every `logging_steps` steps, and once at the
end) becomes one JSON object in log.jsonl: `step`, `epoch`, then what the Trainer reported
(`loss`, `learning_rate`, `grad_norm`; at the end `train_loss`, `train_runtime`, ...), and
`time` (UTC). The plan is printed when training starts, then each logged step, for people:

    train: 200 optimizer steps of 8 samples (2.0 epochs of 800), logged every 10, saved every 500
    train: step 40/200 (20%), epoch 0.80, loss 0.4123, lr 1.9e-04, 1.52 s/step, ETA 4 min 03 s

The callback also saves the processor into each checkpoint (so a checkpoint loads, and merges,
on its own) and, with `eval.every_steps`, makes sure a checkpoint is saved at those steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from moderator.durations import duration
from moderator.training.finetune.model import save_processor
from moderator.training.finetune.rundir import CHECKPOINT_PREFIX, LOG_FILE


class RunLog(TrainerCallback):
    """Writes log.jsonl and the progress line; saves the processor into checkpoints."""

    def __init__(
        self,
        run: Path,
        stream: TextIO,
        *,
        processor: Any,
        save_every: int | None = None,
        samples: int | None = None,
        stopped: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = run / LOG_FILE
        self._run = run
        self._stream = stream
        self._processor = processor
        self._save_every = save_every
        self._samples = samples
        self._stopped = stopped or (lambda: False)
        self._clock = clock
        self._started = clock()
        self._first_step = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._started = self._clock()
        self._first_step = state.global_step  # not 0 when resumed
        print(self.plan(args, state.max_steps), file=self._stream, flush=True)

    def plan(self, args: TrainingArguments, total: int) -> str:
        """The line that opens a run: its steps, how often it logs and saves."""
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        per_step *= max(args.world_size, 1)
        line = f"train: {total} optimizer steps of {per_step} sample{'' if per_step == 1 else 's'}"
        if self._samples:  # the epochs asked for, else those that max_steps makes
            epochs = (
                args.num_train_epochs if args.max_steps <= 0 else total * per_step / self._samples
            )
            line += f" ({epochs:.1f} epochs of {self._samples})"
        if self._first_step:
            line += f", resuming after step {self._first_step}"
        return f"{line}, logged every {int(args.logging_steps)}, saved every {int(args.save_steps)}"

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self._save_every and state.global_step % self._save_every == 0:
            control.should_save = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        checkpoint = self._run / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            save_processor(self._processor, checkpoint)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if not state.is_world_process_zero:  # one log, however many processes train
            return
        entry = log_entry(state.global_step, state.epoch, logs or {})
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        print(self.line(entry, state.max_steps), file=self._stream, flush=True)

    def line(self, entry: dict[str, Any], total: int) -> str:
        """The progress line of one log entry."""
        step = int(entry["step"])
        if "train_runtime" in entry:
            return self._end_line(step, entry)
        parts = [f"train: step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
        if entry.get("epoch") is not None:
            parts.append(f"epoch {entry['epoch']:.2f}")
        if isinstance(entry.get("loss"), int | float):
            parts.append(f"loss {entry['loss']:.4f}")
        if isinstance(entry.get("learning_rate"), int | float):
            parts.append(f"lr {entry['learning_rate']:.1e}")
        done = step - self._first_step
        if done > 0:
            per_step = (self._clock() - self._started) / done
            parts.append(f"{per_step:.2f} s/step")
            if step < total:
                parts.append(f"ETA {duration(per_step * (total - step))}")
        return ", ".join(parts)

    def _end_line(self, step: int, entry: dict[str, Any]) -> str:
        loss = entry.get("train_loss")
        mean = f", mean loss {loss:.4f}" if isinstance(loss, int | float) else ""
        ran = step - self._first_step
        steps = f"{ran} step{'' if ran == 1 else 's'}"
        if self._first_step:
            steps = f"{steps} (steps {self._first_step + 1}-{step})" if ran else "no step"
        what = "stopped" if self._stopped() else "done"
        return f"train: {what}, {steps} in {duration(entry['train_runtime'])}{mean}"


def log_entry(step: int, epoch: float | None, logs: dict[str, Any]) -> dict[str, Any]:
    """One line of log.jsonl: step and epoch first, the Trainer's values, the UTC time."""
    entry: dict[str, Any] = {"step": step, "epoch": round(epoch, 4) if epoch is not None else None}
    entry.update({key: _plain(value) for key, value in logs.items()})
    entry["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    return entry


def _plain(value: Any) -> Any:
    """A JSON-ready value: tensors and numpy scalars as Python numbers."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
