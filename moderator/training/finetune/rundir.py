"""The run directory (`output_dir`): its files, and which checkpoint a resumed run starts from.

    RUN/config.yaml        the effective configuration (config.py `effective`)
    RUN/log.jsonl          one JSON object per logged step (progress.py)
    RUN/checkpoint-N/      the Trainer's checkpoint after optimizer step N (weights or adapter,
                           optimizer, scheduler and RNG states, the processor files)
    RUN/final/             the result: the LoRA adapter, or the whole model, and the processor

A directory that already holds a run (a checkpoint or final/) is only written to again with
`--resume`: a new run never mixes its checkpoints with an old one's. `--resume` alone takes the
newest complete checkpoint (one with its trainer_state.json, written last: a checkpoint whose
saving was cut short has none, and its weights or adapter); a checkpoint named after it must be
one of output_dir's own, and a checkpoint must fit the run: the same method, model class and
LoRA rank (resume_config.py: the same training settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from moderator.errors import ConfigError
from moderator.training.finetune.config import TrainConfig

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
FINAL = "final"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""A checkpoint holds one of these: the LoRA adapter, or the whole model (maybe sharded)."""

Resume = Path | Literal["latest"] | None
"""What `--resume` asked for: the run's latest checkpoint, a given one, or nothing."""

_CHECKPOINT = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, directory) of the run's checkpoints, in step order."""
    if not run.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in run.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name))
    ]
    return sorted(found)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved at (its trainer_state.json)."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        return int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--resume: {checkpoint} is not a training checkpoint (no readable {TRAINER_STATE})"
        ) from exc


def start_checkpoint(run: Path, resume: Resume) -> Path | None:
    """The checkpoint to resume from, or None for a new run (whose directory must not hold
    another run). ConfigError when there is nothing to resume or the directory is taken."""
    if resume is None:
        taken = [p.name for _, p in checkpoints(run)[-1:]] + (
            [FINAL] if (run / FINAL).exists() else []
        )
        if taken:
            raise ConfigError(
                f"output_dir: {run} already holds a run ({', '.join(taken)}); continue it with "
                "--resume, or choose another output_dir"
            )
        return None
    if resume == "latest":
        latest = latest_checkpoint(run)
        if latest is None:
            partial = " (only checkpoints whose saving was cut short)" if checkpoints(run) else ""
            raise ConfigError(
                f"--resume: {run} holds no checkpoint-N directory to resume from{partial}"
            )
        return latest
    path = resume.expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--resume: no checkpoint directory at {path}")
    if path.parent != run:
        raise ConfigError(
            f"--resume: {path} is not a checkpoint of output_dir {run}: a run continues only "
            f"from its own checkpoints (set output_dir: {path.parent} to continue that run)"
        )
    checkpoint_step(path)
    if not _has_weights(path):
        raise ConfigError(
            f"--resume: {path} holds no weights ({' or '.join(WEIGHTS[:3])}, ...): "
            "resume from another checkpoint"
        )
    return path


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint that was saved whole (its trainer_state.json and weights)."""
    complete = [
        path
        for _, path in checkpoints(run)
        if (path / TRAINER_STATE).is_file() and _has_weights(path)
    ]
    return complete[-1] if complete else None


def _has_weights(checkpoint: Path) -> bool:
    return any((checkpoint / name).is_file() for name in WEIGHTS)


def check_resume_fits(checkpoint: Path, config: TrainConfig, architecture: str) -> None:
    """ConfigError (one line) when `checkpoint` was not saved by a run like this one: another
    method, another LoRA rank, or another model class than base_model's `architecture`."""
    adapter = _json(checkpoint / ADAPTER_CONFIG)
    kind = "a LoRA" if adapter is not None else "a full fine-tuning"
    if (adapter is not None) != (config.method == "lora"):
        raise ConfigError(
            f"--resume: {checkpoint} is {kind} checkpoint, but method is {config.method}"
        )
    if adapter is not None and adapter.get("r") != config.lora.r:
        raise ConfigError(
            f"--resume: {checkpoint} has LoRA rank {adapter.get('r')}, but lora.r is "
            f"{config.lora.r}"
        )
    trained = _trained_class(checkpoint, adapter)
    if trained is not None and trained != architecture:
        raise ConfigError(
            f"--resume: {checkpoint} was trained from a {trained}, but base_model is a "
            f"{architecture}"
        )


def _trained_class(checkpoint: Path, adapter: dict[str, Any] | None) -> str | None:
    """The model class a checkpoint holds: a full model's config.json; for an adapter, its
    run's config.yaml, else the config.json of the base it names."""
    if adapter is None:
        return _first_class(_json(checkpoint / "config.json"))
    resolved = (read_config(checkpoint.parent) or {}).get("resolved")
    if isinstance(resolved, dict) and isinstance(resolved.get("architecture"), str):
        return str(resolved["architecture"])
    named = adapter.get("base_model_name_or_path")
    if isinstance(named, str) and named:
        return _first_class(_json(Path(named).expanduser() / "config.json"))
    return None


def _first_class(config: dict[str, Any] | None) -> str | None:
    names = (config or {}).get("architectures")
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_config(run: Path, text: str) -> Path:
    """RUN/config.yaml, replaced whole."""
    run.mkdir(parents=True, exist_ok=True)
    path = run / CONFIG_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def read_config(run: Path) -> dict[str, Any] | None:
    """RUN/config.yaml as written by an earlier start of the run (None: none, or unreadable)."""
    try:
        doc = yaml.safe_load((run / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def read_log(run: Path) -> list[dict[str, Any]]:
    """The entries of RUN/log.jsonl (none when there is no log yet)."""
    path = run / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def trim_log(run: Path, step: int) -> None:
    """Drop the log entries after `step`: a resumed run logs those steps again."""
    path = run / LOG_FILE
    if not path.is_file():
        return
    kept = [entry for entry in read_log(run) if int(entry.get("step", 0)) <= step]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in kept), encoding="utf-8")
