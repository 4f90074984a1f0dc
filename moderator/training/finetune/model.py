"""The base model, ready to train: loaded as the engine loads it, vision tower frozen, LoRA
adapters added or every language-model weight left trainable.

Loading goes through the transformers engine's own loader (moderator/engine/transformers/
load.py) with the run's image caps as engine settings: the processor (its image-only twin where
torchvision is missing), the tiling or pixel cap and the end-of-sequence tokens are exactly the
ones the model is later served with.

What trains: with LoRA, only the adapters on the language model's attention and MLP
projections (`lora.target_modules`); with full fine-tuning, every weight outside the vision
encoder (the language model, its embeddings and output layer, LLaVA-OneVision's projector).
`freeze_vision: false` trains the vision encoder too (with LoRA: the target names are then
matched in it as well).

Weights: full fine-tuning keeps float32 master weights (with `bf16`, the Trainer computes in
bfloat16 under autocast); LoRA loads the frozen base in bfloat16 when `bf16` is on (half the
memory) and keeps the adapters in float32.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.engine.transformers import load as hf_load
from moderator.errors import ConfigError
from moderator.settings import EngineSettings
from moderator.training.finetune.config import PROJECTIONS, TrainConfig
from moderator.training.finetune.inputs import Inputs

VISION_MODULES = ("vision_tower", "visual")
"""The vision encoder's module name: LLaVA-OneVision's SigLIP tower, Qwen2-VL's `visual`
(its patch merger included)."""
LANGUAGE_MODEL = "language_model"


@dataclass
class Prepared:
    """The model to hand to the Trainer (a peft model for LoRA) and what was loaded."""

    model: Any
    loaded: hf_load.Loaded
    trainable: int
    total: int


def engine_settings(config: TrainConfig, inputs: Inputs, *, bf16: bool) -> EngineSettings:
    """The transformers engine settings that load the base as training needs it."""
    dtype = "bfloat16" if bf16 and config.method == "lora" else "float32"
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(inputs.base),
            "transformers": {
                "device": "cpu" if config.device == "cpu" else "auto",
                "dtype": dtype,
                "max_image_tiles": config.image.max_image_tiles,
                "max_pixels": config.image.max_pixels,
                "threads": config.threads,
                "warmup": False,
            },
        }
    )


def load_base(config: TrainConfig, inputs: Inputs, *, bf16: bool) -> hf_load.Loaded:
    """The base checkpoint and its processor, as the engine loads them."""
    try:
        return hf_load.load(engine_settings(config, inputs, bf16=bf16))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("engine.model:", "base_model:", 1)) from exc


def prepare(config: TrainConfig, inputs: Inputs, *, bf16: bool) -> Prepared:
    """Load the base and set up the method: LoRA adapters, or full fine-tuning."""
    loaded = load_base(config, inputs, bf16=bf16)
    model = loaded.model
    model.config.use_cache = False  # no generation while training; the cache only costs memory
    if config.freeze_vision:
        freeze_vision(model)
    if config.method == "lora":
        model = add_lora(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise ConfigError("lora.target_modules: no layer of the model matches; nothing to train")
    return Prepared(model, loaded, trainable, total)


def is_vision(name: str) -> bool:
    """Whether a parameter or module name is inside the vision encoder."""
    return any(part in VISION_MODULES for part in name.split("."))


def freeze_vision(model: Any) -> int:
    """Stop gradients to the vision encoder; the number of parameters frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_vision(name):
            param.requires_grad_(False)
            frozen += param.numel()
    if frozen == 0:
        raise ConfigError("freeze_vision: the model has no vision encoder named as expected")
    return frozen


def lora_targets(config: TrainConfig) -> str | list[str]:
    """peft's `target_modules`: a regular expression confined to the language model while the
    vision tower is frozen; the plain names (matched anywhere) otherwise."""
    names = list(config.lora.target_modules)
    if not config.freeze_vision:
        return names
    alternatives = "|".join(re.escape(name) for name in names)
    return rf".*\.{LANGUAGE_MODEL}\..*\.({alternatives})"


def add_lora(model: Any, config: TrainConfig) -> Any:
    """The model wrapped by peft with LoRA adapters on the target layers."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=lora_targets(config),
        task_type="CAUSAL_LM",
        bias="none",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 asks for transformers' deprecated name; nothing to act on here.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            return get_peft_model(model, lora)
    except ValueError as exc:  # peft: no module matched the targets
        if "not found in the base model" not in str(exc):
            raise ConfigError(f"lora.target_modules: {_first_line(exc)}") from exc
        where = "language model" if config.freeze_vision else "model"
        raise ConfigError(
            f"lora.target_modules: no linear layer of the {where} is named "
            f"{' or '.join(config.lora.target_modules)} (its projections: {', '.join(PROJECTIONS)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def save_processor(processor: Any, directory: Path) -> None:
    """The processor files, naming the processor class of the checkpoint format (not an
    image-only twin's) so any transformers install can load them."""
    processor.save_pretrained(directory)
    real = next(
        (c.__name__ for c in type(processor).__mro__ if not c.__name__.startswith("ImageOnly")),
        type(processor).__name__,
    )
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "processor_class" in doc:
            doc["processor_class"] = real
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
