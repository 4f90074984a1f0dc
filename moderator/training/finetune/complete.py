"""A resumed run with nothing left to train: its checkpoint already reached the run's end.

`--resume` on such a run trains no step (transformers' Trainer would run one more and save the
model again): it says where the run ended, writes RUN/final from the checkpoint when a signal
stopped the run before final/ was saved, and runs the built-in evaluation when the run has one
that did not finish (RUN/eval/compare.md, its last file, is missing).

The end of a run: `max_steps` when set; else `epochs`, against the epoch the checkpoint's
trainer_state.json records (a run trained with a larger max_steps or fewer epochs goes on).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from moderator.engine.smoke import MARKER
from moderator.training.finetune.config import TrainConfig
from moderator.training.finetune.rundir import FINAL, TRAINER_STATE, checkpoint_step

# The Trainer's own files in a checkpoint: what RUN/final does not hold.
TRAINER_FILES = frozenset(
    {TRAINER_STATE, "optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin"}
)
EPOCH_SLACK = 1e-6


@dataclass(frozen=True)
class Completion:
    """Where a finished run ended, and against which end: `max_steps M` or `epochs E`."""

    step: int
    end: str


def completion(checkpoint: Path, config: TrainConfig) -> Completion | None:
    """The Completion when `checkpoint` is at or past the end `config` asks for; None when
    there are steps left to train."""
    step = checkpoint_step(checkpoint)
    if config.max_steps is not None:
        done = step >= config.max_steps
        return Completion(step, f"max_steps {config.max_steps}") if done else None
    epoch = _state(checkpoint).get("epoch")
    if not isinstance(epoch, int | float) or epoch < config.epochs - EPOCH_SLACK:
        return None
    return Completion(step, f"epochs {config.epochs:g} (epoch {epoch:g})")


def complete_line(run: Path, done: Completion) -> str:
    """`train: RUN is complete at step N of max_steps M; ...`."""
    return (
        f"train: {run} is complete at step {done.step} of {done.end}; nothing to train "
        "(raise max_steps or epochs to train further, or choose another output_dir)"
    )


def final_from_checkpoint(checkpoint: Path, run: Path, base: Path) -> Path:
    """RUN/final made from `checkpoint`: its model (or adapter) and processor files without
    the Trainer's state, and the base's smoke-test marker; written beside it, then renamed."""
    final = run / FINAL
    partial = run / f".{FINAL}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and not _trainer_file(path):
            shutil.copy2(path, partial / path.name)
    if (base / MARKER).is_file():
        shutil.copy2(base / MARKER, partial / MARKER)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


def _trainer_file(path: Path) -> bool:
    """The Trainer's state, or the empty model-card template peft saves beside an adapter."""
    if path.name in TRAINER_FILES or (path.name.startswith("rng_state") and path.suffix == ".pth"):
        return True
    if path.name == "README.md":
        return "library_name: peft" in path.read_text(encoding="utf-8", errors="replace")
    return False


def _state(checkpoint: Path) -> dict[str, object]:
    try:
        doc = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
