"""The run configuration of `moderator train`: one YAML file, every key checked.

    base_model: ./LlavaGuard-v1.2-0.5B-OV-hf   a local checkpoint directory (never downloaded)
    dataset: data                              `moderator dataset build`'s output directory
    output_dir: runs/ov-lora                   the run directory (rundir.py)
    method: lora                               or full

Every other key has a default (`TrainConfig`'s fields; docs/training.md lists them). An unknown
key, a value of the wrong kind or out of range is a ConfigError of one line naming the key (the
CLI exits 2). Relative paths are taken from the working directory. The effective configuration
(every default filled in, paths made absolute) is saved as RUN/config.yaml, with a `resolved`
section of what was found: the checkpoint's model class, the split files and their SHA-256.
A config.yaml can be given back to `moderator train --config`; its `resolved` section is
recomputed, not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moderator.errors import ConfigError
from moderator.settings_errors import field_problem
from moderator.yaml_keys import DuplicateKey, load_unique, yaml_problem

Arch = Literal["llava-onevision", "qwen2-vl", "qwen2.5-vl"]
ARCHITECTURES: dict[str, str] = {
    "LlavaOnevisionForConditionalGeneration": "llava-onevision",
    "Qwen2VLForConditionalGeneration": "qwen2-vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2.5-vl",
}
"""The model classes `moderator train` trains (config.json `architectures`) and their arch."""

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of the Qwen2 language model all three architectures use."""

LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
"""The default learning rate of each method (LlavaGuard's full fine-tunes used 1e-5 to 2e-5)."""

RESOLVED = "resolved"
"""The section of RUN/config.yaml that records what the run found (not read back)."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraOptions(_Section):
    """LoRA adapters (method: lora)."""

    r: int = Field(default=16, ge=1, le=1024, description="rank of the adapters")
    alpha: int = Field(default=32, ge=1, description="scaling: the update is alpha/r * BA")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(
        default=PROJECTIONS,
        min_length=1,
        description="names of the linear layers that get adapters; in the language model only "
        "while freeze_vision is true",
    )


class ImageOptions(_Section):
    """Image size caps, applied to the processor as the transformers engine applies them."""

    max_image_tiles: int | None = Field(
        default=None, ge=1, le=36, description="LLaVA-OneVision: most anyres tiles per image"
    )
    max_pixels: int | None = Field(
        default=None, ge=3136, description="Qwen2-VL family: most pixels per image"
    )


class EvalOptions(_Section):
    """The evaluation of the trained model on the dataset's eval split."""

    enabled: bool | None = Field(
        default=None, description="null: evaluate when the dataset has the eval split"
    )
    every_steps: int | None = Field(
        default=None, ge=1, description="also evaluate the checkpoint saved every N steps"
    )
    split: str = Field(default="eval", min_length=1)


class TrainConfig(_Section):
    """Everything a training run needs; see the module docstring for the required keys."""

    base_model: Path
    arch: Arch | None = Field(default=None, description="checked against the checkpoint's class")
    dataset: Path
    train_split: str = Field(default="train", min_length=1)
    output_dir: Path
    policies: Path | None = Field(
        default=None, description="policy directory: default.yaml prompts samples without one"
    )
    settings: Path | None = Field(
        default=None, description="moderator settings file: s3.*, fetch.* and tenancy.* apply"
    )
    method: Literal["lora", "full"] = "lora"
    lora: LoraOptions = LoraOptions()
    freeze_vision: bool = True
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs when set")
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=1, ge=1, le=1024, description="samples per device and step")
    gradient_accumulation_steps: int = Field(default=8, ge=1, le=4096)
    bf16: bool | Literal["auto"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = Field(default=0, ge=0)
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int = Field(default=500, ge=1)
    save_total_limit: int | None = Field(default=3, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256, description="torch CPU threads")
    dataloader_workers: int = Field(default=0, ge=0, le=64)
    image: ImageOptions = ImageOptions()
    eval: EvalOptions = EvalOptions()

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16(cls, value: Any) -> Any:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError("should be true, false or auto")

    @property
    def lr(self) -> float:
        """The learning rate: as configured, else the method's default."""
        return self.learning_rate if self.learning_rate is not None else LEARNING_RATE[self.method]


def parse_config(doc: Any, source: str) -> TrainConfig:
    """Validate a parsed YAML document; ConfigError naming `source` and the first bad key."""
    if not isinstance(doc, dict):
        raise ConfigError(f"train config {source}: the top level must be a mapping of keys")
    values = {key: value for key, value in doc.items() if key != RESOLVED}
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"train config {source}: {_problem(exc)}") from None


def load_config(path: Path) -> TrainConfig:
    """Read and validate a YAML run configuration (ConfigError, one line, when it is not one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"train config {path}: cannot read: {reason}") from None
    try:
        doc = load_unique(text)
    except DuplicateKey as exc:
        raise ConfigError(
            f"train config {path} line {exc.line}: duplicate key {exc.key!r}"
        ) from None
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc, text)
        where = f" line {line}" if line is not None else ""
        raise ConfigError(f"train config {path}{where}: {problem}") from None
    return parse_config({} if doc is None else doc, str(path))


def _problem(exc: ValidationError) -> str:
    """The first problem, an unknown key (a typo, with its did-you-mean) before any other: the
    typo may be why another key looks wrong or missing."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = ".".join(str(part) for part in err["loc"]) or "config"
    others = exc.error_count() - 1
    more = f" (and {others} more problem{'' if others == 1 else 's'})" if others > 0 else ""
    if err["type"] == "extra_forbidden":
        return f"{key}: {field_problem(err, TrainConfig)}{more}"
    if err["type"] == "missing":
        return f"{key}: required{more}"
    if err["type"] == "model_type":  # a section given as a scalar or a list
        return f"{key}: should be a mapping of keys (docs/training.md lists them){more}"
    message = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    return f"{key}: {message}{more}"


def effective(config: TrainConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """RUN/config.yaml's content: every key with its value (defaults filled in, paths
    absolute, the learning rate chosen), then the `resolved` section."""
    doc = config.model_dump(mode="json")
    for key in ("base_model", "dataset", "output_dir", "policies", "settings"):
        value = getattr(config, key)
        doc[key] = str(value.expanduser().resolve()) if value is not None else None
    doc["learning_rate"] = config.lr
    doc[RESOLVED] = resolved
    return doc


def dump_yaml(doc: dict[str, Any]) -> str:
    """YAML in the document's own key order, block style."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
