"""What a run reads, checked before anything is loaded: the base checkpoint and its model
class, the dataset's split files, the policy directory.

Every problem is a ConfigError of one line naming the key and the path (exit 2), so a typo
costs a second, not a model load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.engine.transformers.load import CHECKPOINT_FILES
from moderator.errors import ConfigError
from moderator.paths import directory_problem
from moderator.training.dataset import read_dataset
from moderator.training.finetune.config import ARCHITECTURES, TrainConfig

SPLIT_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of a run, paths absolute."""

    base: Path
    architecture: str  # the checkpoint's model class
    arch: str  # its short name (config.Arch)
    train: Path
    eval: Path | None  # None: no evaluation

    def resolved(self) -> dict[str, Any]:
        """The `resolved` section of RUN/config.yaml (hashes read now)."""
        splits = {"train": self.train, **({"eval": self.eval} if self.eval else {})}
        return {
            "base_model": str(self.base),
            "architecture": self.architecture,
            "arch": self.arch,
            "splits": {name: str(path) for name, path in splits.items()},
            "dataset_sha256": {name: sha256_file(path) for name, path in splits.items()},
        }


def check_inputs(config: TrainConfig) -> Inputs:
    """Check every path of `config`; the Inputs, or ConfigError naming the first problem."""
    base = config.base_model.expanduser().resolve()
    architecture = checkpoint_class(base)
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        supported = ", ".join(ARCHITECTURES)
        raise ConfigError(
            f"base_model: {base} is a {architecture}; moderator train supports {supported}"
        )
    if config.arch is not None and config.arch != arch:
        raise ConfigError(
            f"arch: {config.arch}, but base_model {base}/config.json names {architecture} ({arch})"
        )
    train, eval_file = dataset_splits(config)
    if config.policies is not None and not config.policies.expanduser().is_dir():
        raise ConfigError(f"policies: {config.policies} is not a directory")
    if config.settings is not None and not config.settings.expanduser().is_file():
        raise ConfigError(f"settings: no settings file at {config.settings}")
    check_output_dir(config.output_dir.expanduser().resolve())
    return Inputs(base, architecture, arch, train, eval_file)


def check_output_dir(run: Path) -> None:
    """ConfigError when the run directory cannot be one: a file is in the way, or the folder
    it would be made in cannot be written to."""
    problem = directory_problem(run)
    if problem is not None:
        raise ConfigError(f"output_dir: {problem}")


def checkpoint_class(base: Path) -> str:
    """The model class named by a checkpoint directory's config.json."""
    if not base.is_dir():
        raise ConfigError(f"base_model: no checkpoint directory at {base} (never downloaded)")
    path = base / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"base_model: {base} has no config.json (not a transformers checkpoint)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model: {path} cannot be read: {exc}") from None
    names = doc.get("architectures") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ConfigError(f"base_model: {path} names no architecture")
    for what, files in CHECKPOINT_FILES:
        if not any((base / name).is_file() for name in files):
            raise ConfigError(f"base_model: {base} has no {what} ({' or '.join(files)})")
    return names[0]


def dataset_splits(config: TrainConfig) -> tuple[Path, Path | None]:
    """The training split's file and the eval split's (None when evaluation is off).

    `dataset` is a directory of split files (`NAME.json` or `NAME.jsonl`, as `moderator
    dataset build` writes them) or one dataset file, which is then the training split. An eval
    split asked for (`eval.enabled: true`, or `eval.split` given) must exist and hold samples.
    """
    dataset = config.dataset.expanduser().resolve()
    asked = config.eval.enabled is True or "split" in config.eval.model_fields_set
    if dataset.is_file():
        if config.eval.enabled is not False and asked:
            raise ConfigError(
                f"eval.split: dataset {dataset} is one file, with no {config.eval.split} split; "
                "set eval.enabled: false to train without"
            )
        return dataset, None
    if not dataset.is_dir():
        raise ConfigError(f"dataset: no dataset directory or file at {dataset}")
    train = split_file(dataset, config.train_split)
    if train is None:
        raise ConfigError(
            f"dataset: {dataset} has no {config.train_split} split "
            f"({config.train_split}.json or .jsonl, as `moderator dataset build` writes)"
        )
    if config.eval.enabled is False:
        return train, None
    found = split_file(dataset, config.eval.split)
    if found is None and asked:
        raise ConfigError(
            f"eval.split: {dataset} has no {config.eval.split} split to evaluate on "
            f"({config.eval.split}.json or .jsonl); set eval.enabled: false to train without"
        )
    if found is not None and not read_dataset(found):
        raise ConfigError(
            f"eval.split: {found} holds no samples; set eval.enabled: false to train without"
        )
    return train, found


def eval_note(config: TrainConfig, inputs: Inputs) -> str | None:
    """The note for a run that will not evaluate although evaluation was not turned off (no
    eval split to find); None otherwise."""
    if inputs.eval is not None or config.eval.enabled is False:
        return None
    split = config.eval.split
    dataset = config.dataset.expanduser().resolve()
    if dataset.is_file():
        return f"train: note: dataset {dataset} is one file: no evaluation will run"
    return (
        f"train: note: {dataset} has no {split} split ({split}.json or .jsonl): "
        "no evaluation will run"
    )


def split_file(directory: Path, split: str) -> Path | None:
    """DIR/SPLIT.json or DIR/SPLIT.jsonl, whichever exists; None when neither does.
    ConfigError when both do: either could be the split, so neither is picked."""
    found = [p for s in SPLIT_SUFFIXES if (p := directory / f"{split}{s}").is_file()]
    if len(found) > 1:
        raise ConfigError(
            f"dataset: {directory} has both {found[0].name} and {found[1].name}: a split is "
            f"one file, {split}.json or {split}.jsonl; remove or rename the other"
        )
    return found[0] if found else None


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
