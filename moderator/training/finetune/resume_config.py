"""What a resumed run may change in its configuration, and what RUN/config.yaml then records.

A checkpoint holds the optimizer, the schedule and the RNG state of the run that saved it, so
the settings that decide the training (the base model, the method and its LoRA options, the
learning rate and its schedule, the batch, the seed, the image caps...) are the run's own: a
changed one would be recorded but never used, or mix two trainings into one model. `--resume`
refuses such a change in one line naming the keys. What may change:

    max_steps, epochs          where the run ends (a finished run is trained further)
    logging_steps, save_steps, save_total_limit, eval.*
                               how often it logs, saves and evaluates, and its evaluation
    device, threads, dataloader_workers, gradient_checkpointing
                               where and how fast it runs, not what it learns
    dataset, train_split, policies, settings
                               the data (a warning says when a split's content changed)

RUN/config.yaml keeps what the run started with; a resume only updates the keys above.
"""

from __future__ import annotations

from typing import Any

from moderator.errors import ConfigError
from moderator.training.finetune.config import RESOLVED

MAY_CHANGE = frozenset(
    {
        "max_steps",
        "epochs",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval",
        "device",
        "threads",
        "dataloader_workers",
        "gradient_checkpointing",
        "dataset",
        "train_split",
        "policies",
        "settings",
        "output_dir",
    }
)
"""Top-level keys of the run configuration a resumed run may change."""


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys (`lora.r` for a section's) whose value in `now` differs from `before`, the run's
    config.yaml, leaving out those that may change and those `before` does not record."""
    changed: list[str] = []
    for key, value in now.items():
        if key in MAY_CHANGE or key == RESOLVED or key not in before:
            continue
        old = before[key]
        if isinstance(value, dict) and isinstance(old, dict):
            changed += [
                f"{key}.{name}"
                for name, inner in value.items()
                if name in old and old[name] != inner
            ]
        elif old != value:
            changed.append(key)
    return changed


def check_unchanged(config_file: str, before: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """ConfigError (one line) when the configuration `now` changes a setting that decides the
    training from what the run's config.yaml (`before`; None: none) records."""
    if before is None:
        return
    changed = changed_keys(before, now)
    if changed:
        raise ConfigError(
            f"train --resume: the run's configuration changed ({', '.join(changed)}): a resumed "
            f"run keeps the settings it started with ({config_file}); put them back, or start "
            "a new run in another output_dir"
        )


def resumed_config(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """RUN/config.yaml after a resume: what the run started with (its `resolved` section
    included), with the keys that may change taken from `now`."""
    if before is None:
        return now
    return {**before, **{key: value for key, value in now.items() if key in MAY_CHANGE}}
