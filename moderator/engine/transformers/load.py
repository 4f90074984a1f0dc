"""Loading a guard-model checkpoint with transformers: device, dtype, tiling cap, grammar.

Separate from the engine so the loading rules (what a checkpoint directory must hold, which
error an operator sees) read in one place. torch and transformers are imported lazily: the
package works without the `transformers` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.settings import EngineSettings, TransformersSettings

TRANSFORMERS_MISSING = (
    "engine.kind=transformers needs the transformers extra: pip install 'moderator[transformers]'"
)
XGRAMMAR_MISSING = (
    "engine.generation.structured=true needs xgrammar (part of the transformers extra): "
    "pip install 'moderator[transformers]', or set engine.generation.structured=false"
)


CHECKPOINT_FILES = (
    (
        "weights",
        (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        ),
    ),
    ("tokenizer", ("tokenizer.json", "tokenizer.model", "vocab.json")),
)
"""What a checkpoint directory must hold besides config.json, each one of the names given:
checked before loading, since transformers' own errors name no file for some of them."""


@dataclass
class Loaded:
    """A model and its processor, ready for `generate`."""

    model: Any
    processor: Any
    device: Any
    dtype: Any
    architecture: str
    vocab_size: int
    eos_token_ids: list[int]
    pad_token_id: int


def checkpoint_dir(settings: EngineSettings) -> Path:
    """The checkpoint directory named by engine.model; ConfigError when it is not usable."""
    if not settings.model:
        raise ConfigError(
            "engine.model is required for engine.kind=transformers: a checkpoint directory "
            "(weights are never downloaded; `moderator model make-tiny DIR` writes a test one)"
        )
    path = Path(settings.model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"engine.model: no checkpoint directory at {path} "
            "(weights are never downloaded: put the checkpoint there)"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"engine.model: {path} has no config.json (not a transformers checkpoint)"
        )
    for what, names in CHECKPOINT_FILES:
        if not any((path / name).is_file() for name in names):
            raise ConfigError(f"engine.model: {path} has no {what} ({' or '.join(names)})")
    return path


def architecture(path: Path) -> str:
    """`architectures[0]` of the checkpoint's config.json."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        arch = config["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"engine.model: {path}/config.json names no architecture") from exc
    if not isinstance(arch, str):
        raise ConfigError(f"engine.model: {path}/config.json names no architecture")
    return arch


def load(settings: EngineSettings) -> Loaded:
    """Load processor and model from engine.model onto the configured device."""
    path = checkpoint_dir(settings)
    arch = architecture(path)
    try:
        import torch
        from transformers import AutoModelForImageTextToText

        from moderator.engine.transformers.processors import load_processor
    except ImportError as exc:
        raise ConfigError(TRANSFORMERS_MISSING) from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a service logs, no bars
    opts = settings.transformers
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    device = _device(torch, opts.device)
    dtype = _dtype(torch, opts.dtype, device)
    try:
        processor = load_processor(path)
        extra: dict[str, Any] = {}
        if opts.attn_implementation:
            extra["attn_implementation"] = opts.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=True, **extra
        )
    except (ImportError, OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"engine.model: cannot load {path} ({arch}): {_first_line(exc)}") from exc
    model.to(device)
    model.eval()  # type: ignore[no-untyped-call]  # untyped in torch
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    _cap_image_size(processor, model, opts)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    vocab = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[no-untyped-call]  # untyped
    return Loaded(model, processor, device, dtype, arch, vocab, eos, int(pad))


def compile_grammar(loaded: Loaded, schema: dict[str, Any]) -> Any:
    """The verdict schema compiled for this tokenizer (one-line separators, fixed key order)."""
    try:
        import xgrammar as xgr
    except ImportError as exc:
        raise ConfigError(XGRAMMAR_MISSING) from exc
    info = xgr.TokenizerInfo.from_huggingface(
        loaded.processor.tokenizer,
        vocab_size=loaded.vocab_size,
        stop_token_ids=loaded.eos_token_ids,
    )
    compiler = xgr.GrammarCompiler(info)
    return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)


def grammar_processor(compiled: Any) -> Any:
    """A fresh logits processor: xgrammar's are single-use, one per `generate` call."""
    import xgrammar.contrib.hf as xgr_hf

    return xgr_hf.LogitsProcessor(compiled)


def input_size(loaded: Loaded) -> int:
    """Longest image side the model can use; decoding downsizes to about this."""
    image_processor = loaded.processor.image_processor
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:
        return int(max(max(pair) for pair in pinpoints))
    size = getattr(image_processor, "size", None) or {}
    longest = _get(size, "longest_edge")
    if longest:  # Qwen2-VL: a pixel budget, not a side length
        return max(64, int(int(longest) ** 0.5 * 1.5))
    side = _get(size, "height") or _get(size, "shortest_edge") or 448
    return int(side)


def _device(torch: Any, wanted: str) -> Any:
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"engine.transformers.device={wanted}: no CUDA device is available")
    try:
        return torch.device(wanted)
    except RuntimeError as exc:
        raise ConfigError(f"engine.transformers.device={wanted}: {_first_line(exc)}") from exc


def _dtype(torch: Any, wanted: str, device: Any) -> Any:
    if wanted == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, wanted)


def _cap_image_size(processor: Any, model: Any, opts: TransformersSettings) -> None:
    """Apply the tiling cap (LLaVA-OneVision) or the pixel cap (Qwen2-VL family)."""
    image_processor = processor.image_processor
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if opts.max_image_tiles is not None and pinpoints:
        kept = cap_pinpoints(pinpoints, _base_side(image_processor), opts.max_image_tiles)
        image_processor.image_grid_pinpoints = kept
        model.config.image_grid_pinpoints = kept
        ratio = f"anyres_max_{max(opts.max_image_tiles, 1)}"
        if hasattr(processor, "vision_aspect_ratio"):
            processor.vision_aspect_ratio = ratio
        if hasattr(model.config, "vision_aspect_ratio"):
            model.config.vision_aspect_ratio = ratio
    if opts.max_pixels is not None and _get(getattr(image_processor, "size", {}), "longest_edge"):
        size = dict(image_processor.size)
        size["longest_edge"] = opts.max_pixels
        size["shortest_edge"] = min(int(size.get("shortest_edge") or 0), opts.max_pixels)
        image_processor.size = type(image_processor.size)(**size)


def cap_pinpoints(pinpoints: list[list[int]], base: int, max_tiles: int) -> list[list[int]]:
    """Grid resolutions with at most `max_tiles` base tiles (the 1x1 grid is always kept)."""
    kept = [
        list(pair)
        for pair in pinpoints
        if (pair[0] // base) * (pair[1] // base) <= max(max_tiles, 1)
    ]
    return kept or [[base, base]]


def _base_side(image_processor: Any) -> int:
    size = getattr(image_processor, "size", None) or {}
    side = _get(size, "height") or _get(size, "shortest_edge")
    return int(side) if side else 384


def _get(size: Any, key: str) -> Any:
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("engine.model: the checkpoint defines no end-of-sequence token")
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def _first_line(exc: BaseException) -> str:
    """The message's first line, and the next ones while a line ends with a colon (an
    introduction to the list that says what is wrong), at most 400 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    taken = [lines[0]]
    for line in lines[1:]:
        if not taken[-1].endswith(":"):
            break
        taken.append(line)
    text = " ".join(taken)
    return text if len(text) <= 400 else text[:399] + "…"
