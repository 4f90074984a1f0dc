"""`moderator train merge`: a training run's weights as one full checkpoint that can be served.

A LoRA run's adapter is folded into its base model (peft's `merge_and_unload`) and saved in the
standard transformers layout: config.json naming the base's architecture, safetensors weights
under the base's own parameter names (no `base_model.model.` prefix, no LoRA tensors), the
generation config, and the base's processor, tokenizer and chat template files. The
`transformers` engine loads the result (`engine.model: DIR`) and, for Qwen2-VL and Qwen2.5-VL,
so can an LMDeploy or vLLM server. A full fine-tuning run's model is copied as it is, without
the trainer's state. Either way the checkpoint gets a model card (card.py), and it carries the
smoke-test marker exactly when its base did: a model tuned from random weights stays a
smoke-test model.

The checkpoint is written beside DIR and renamed into place, so an interrupted merge leaves the
previous one (or none). torch, transformers and peft are imported when a merge runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.engine.smoke import CARD, MARKER, is_smoke_test
from moderator.errors import ConfigError
from moderator.paths import directory_problem
from moderator.training.finetune.card import EVAL_DIR, STEP_PREFIX, CardInputs, write_card
from moderator.training.finetune.rundir import (
    ADAPTER_CONFIG,
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    FINAL,
)

PEFT_MISSING = (
    "train merge needs the train extra (torch, transformers, peft): pip install 'moderator[train]'"
)
SOURCE_MUST = (
    "SOURCE must be a run directory (with final/), a checkpoint-N/ directory of a run, or a "
    f"LoRA adapter directory ({ADAPTER_CONFIG})"
)
# What a served checkpoint reads beside its weights: processor, tokenizer, chat template.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# What a run keeps beside a full model that a served checkpoint does not carry.
NOT_SERVED = frozenset(
    {
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "trainer_state.json",
        "training_args.bin",
        "README.md",
        MARKER,
        CARD,
    }
)


@dataclass(frozen=True)
class Trained:
    """What a run or adapter directory holds: the adapter (LoRA) or the full model, its base."""

    weights: Path
    lora: bool
    base: Path | None
    run: Path | None


def merge_lora(
    source: Path, out: Path, *, base: Path | None = None, name: str | None = None
) -> Path:
    """Write the full checkpoint of `source` (a run directory, whose `final/` is used, or an
    adapter directory) into `out` with its model card; return `out`.

    The base model is `base`, else the run's `base_model`, else the adapter's
    `base_model_name_or_path`. `name` (default: the run directory's name, else `out`'s) is
    what verdicts call the model. ConfigError (one line) for a missing or unusable directory,
    a base of another architecture than the adapter's, or an `out` that holds something else.
    """
    trained = locate(Path(source), Path(base) if base is not None else None)
    out = Path(out)
    _check_out(out, trained)
    partial = out.with_name(f".{out.name}.merging")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if trained.lora:
            _save_merged(trained, partial)
        else:
            _copy_full(trained.weights, partial)
        _copy_processor(trained, partial)
        _mark_smoke_test(trained, partial)
        run_name = trained.run.name if trained.run is not None else out.name
        write_card(partial, _card_inputs(trained, name or run_name))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    """`moderator train merge RUN_OR_ADAPTER_DIR --out DIR [--base PATH]`: the checkpoint's
    path on stdout, its name and revision on stderr."""
    if args.out is None:
        raise ConfigError("train merge: --out DIR is required")
    trained = locate(Path(args.source), Path(args.base) if args.base is not None else None)
    _check_out(Path(args.out), trained)  # before saying what it will do
    how = "the adapter folded into the base, loaded on the CPU" if trained.lora else "a copy"
    print(f"merge: {args.source} -> {args.out}: {how}", file=sys.stderr)
    out = merge_lora(args.source, args.out, base=args.base, name=args.name)
    card = json.loads((out / CARD).read_text(encoding="utf-8"))
    smoke = " (SMOKE-TEST model: random base weights)" if is_smoke_test(out) else ""
    print(f"merged: {card['name']}@{card['revision']}{smoke}", file=sys.stderr)
    print(out)
    return 0


# -- what the source holds -----------------------------------------------------------------------


def locate(source: Path, base: Path | None = None) -> Trained:
    """The weights of `source` (a run directory or an adapter/model directory) and their base."""
    if not source.is_dir():
        raise ConfigError(f"train merge: {source}: no such run or adapter directory")
    run: Path | None = None
    weights = source
    if (source / FINAL).is_dir():
        run, weights = source, source / FINAL
    elif (source / CONFIG_FILE).is_file():
        raise ConfigError(f"train merge: {source}: the run has no {FINAL}/ yet (still training?)")
    elif (source.parent / CONFIG_FILE).is_file():
        run = source.parent  # a run's final/ or checkpoint-N/ given directly
    if (weights / ADAPTER_CONFIG).is_file():
        adapter = _read_json(weights / ADAPTER_CONFIG)
        lora_base = base or _base_from(adapter, run)
        _check_base(lora_base, adapter, run)
        return Trained(weights, True, lora_base, run)
    if (weights / "config.json").is_file() and run is not None:
        full_base = base or _run_base(run)
        if full_base is not None and not (full_base / "config.json").is_file():
            raise ConfigError(
                f"train merge: base model {full_base}: no checkpoint (config.json) there"
            )
        return Trained(weights, False, full_base, run)
    held = (
        "a model that belongs to no run (no config.yaml beside it)"
        if (weights / "config.json").is_file()
        else f"neither a LoRA adapter ({ADAPTER_CONFIG}) nor a run's model"
    )
    raise ConfigError(f"train merge: {weights} holds {held}; {SOURCE_MUST}")


def _base_from(adapter: dict[str, Any], run: Path | None) -> Path:
    """The run's base_model, else the adapter's base_model_name_or_path (a local directory)."""
    from_run = _run_base(run) if run is not None else None
    if from_run is not None:
        return from_run
    named = adapter.get("base_model_name_or_path")
    if isinstance(named, str) and named and Path(named).expanduser().is_dir():
        return Path(named).expanduser()
    shown = named if isinstance(named, str) and named else "none"
    raise ConfigError(
        f"train merge: the adapter's base model ({ADAPTER_CONFIG} base_model_name_or_path: "
        f"{shown}) is not a local directory; give --base PATH"
    )


def _run_base(run: Path) -> Path | None:
    """The base model path the run's config.yaml names (card.run_config reads the file)."""
    from moderator.training.finetune.card import base_path, run_config

    named = base_path(run_config(run))
    return Path(named).expanduser() if named else None


def _check_base(base: Path, adapter: dict[str, Any], run: Path | None) -> None:
    config = base / "config.json"
    if not config.is_file():
        raise ConfigError(f"train merge: base model {base}: no checkpoint (config.json) there")
    architectures = _read_json(config).get("architectures") or []
    trained_on = _trained_class(adapter, run)
    if trained_on and architectures and trained_on not in architectures:
        raise ConfigError(
            f"train merge: the adapter was trained on {trained_on}, but base model {base} "
            f"is {architectures[0]}"
        )


def _trained_class(adapter: dict[str, Any], run: Path | None) -> str | None:
    """The model class the adapter was trained on: peft's record, the run's config, or the
    class of the base the adapter names (when that is a local checkpoint)."""
    from moderator.training.finetune.card import run_config

    mapping = adapter.get("auto_mapping")
    if isinstance(mapping, dict) and isinstance(mapping.get("base_model_class"), str):
        return str(mapping["base_model_class"])
    resolved = run_config(run).get("resolved") if run is not None else None
    if isinstance(resolved, dict) and isinstance(resolved.get("architecture"), str):
        return str(resolved["architecture"])
    named = adapter.get("base_model_name_or_path")
    if isinstance(named, str) and named and (Path(named).expanduser() / "config.json").is_file():
        classes = _read_json(Path(named).expanduser() / "config.json").get("architectures")
        if isinstance(classes, list) and classes and isinstance(classes[0], str):
            return classes[0]
    return None


def _check_out(out: Path, trained: Trained) -> None:
    resolved = out.resolve()
    for inside in (trained.weights, trained.base):
        if inside is not None and (resolved == inside.resolve()):
            raise ConfigError(f"train merge: --out {out} is the source or the base model")
    problem = directory_problem(out)
    if problem is not None:
        raise ConfigError(f"train merge: --out: {problem}")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD).is_file():
        raise ConfigError(
            f"train merge: --out {out} is not empty and holds no merged checkpoint; not overwriting"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"train merge: {path}: not readable JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"train merge: {path}: not a JSON object")
    return document


# -- writing -------------------------------------------------------------------------------------


def _save_merged(trained: Trained, out: Path) -> None:
    """Base + adapter, merged in the base's stored dtype, saved in the standard layout."""
    assert trained.base is not None  # locate() always finds a LoRA run's base
    try:
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ConfigError(PEFT_MISSING) from exc
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream
    with warnings.catch_warnings():
        # peft asks the model an attribute that transformers 5 renamed (its own deprecation).
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                trained.base, dtype="auto", local_files_only=True
            )
            peft_model = PeftModel.from_pretrained(model, trained.weights, is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(
                f"train merge: cannot load {trained.weights} on {trained.base}: {_first(exc)}"
            ) from exc
        merged = peft_model.merge_and_unload()
    merged.save_pretrained(out)


def _copy_full(weights: Path, out: Path) -> None:
    """A full fine-tuning run's model, without the trainer's state."""
    out.mkdir(parents=True)
    for item in sorted(weights.iterdir()):
        if item.is_file() and item.name not in NOT_SERVED and not item.name.startswith("rng_state"):
            shutil.copy2(item, out / item.name)


def _copy_processor(trained: Trained, out: Path) -> None:
    """Processor, tokenizer and chat template files that `out` lacks: a LoRA run's from its
    base (training leaves the tokenizer as it was), then from the run's own copy. Class names
    are the real transformers processors' (not the image-only twins' of processors.py)."""
    from moderator.engine.transformers.processors import IMAGE_ONLY

    order = (trained.base, trained.weights) if trained.lora else (trained.weights, trained.base)
    sources = [d for d in order if d is not None]
    for name in PROCESSOR_FILES:
        found = next((d / name for d in sources if (d / name).is_file()), None)
        if found is not None and not (out / name).is_file():
            shutil.copy2(found, out / name)
    if not any((out / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ConfigError(f"train merge: no tokenizer files in {' or '.join(map(str, sources))}")
    real = {cls.__name__: name for name, cls in IMAGE_ONLY.items()}
    for name in PROCESSOR_FILES:
        if name.endswith(".json") and (out / name).is_file():
            _name_real_processor(out / name, real)


def _name_real_processor(path: Path, real: dict[str, str]) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config, dict) and config.get("processor_class") in real:
        config["processor_class"] = real[config["processor_class"]]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _mark_smoke_test(trained: Trained, out: Path) -> None:
    """Copy the smoke-test marker of a random-weight base (or of a full run that has one)."""
    for directory in (trained.base, trained.weights):
        if directory is not None and is_smoke_test(directory):
            marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
            marker["fine_tuned"] = True
            (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            return


def _card_inputs(trained: Trained, name: str) -> CardInputs:
    adapter = _read_json(trained.weights / ADAPTER_CONFIG) if trained.lora else None
    report = None
    step = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", trained.weights.name)
    if trained.run is not None and step is not None:  # a checkpoint's own periodic report
        report = trained.run / EVAL_DIR / f"{STEP_PREFIX}{step.group(1)}"
    return CardInputs(name, trained.base, trained.run, trained.weights, adapter, report)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
