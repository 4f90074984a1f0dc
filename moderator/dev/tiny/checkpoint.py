"""Random-weight checkpoints of the guard-model architectures: tiny for smoke tests, full size
for GPU benchmarks.

Guard weights cannot be downloaded in tests, so `make_tiny` writes a checkpoint of the real model
class (LLaVA-OneVision, Qwen2-VL or Qwen2.5-VL) with hidden sizes of 32-256, two layers, images of
tens of tokens and a tokenizer trained here (`dev/tiny/tokenizer.py`). It loads with the generic
`AutoProcessor` / `AutoModelForImageTextToText` classes and generates, which is all an engine needs
to exercise its real loading, batching and decoding code. Its verdicts are meaningless: the
directory carries the marker of `engine/smoke.py`, which lets engines label their output.
`write_checkpoint` does the same for any `Dims` (`dev/tiny/dims.py`); with the `FULL` sizes it
writes a model that costs on a GPU what the released one costs (`bench/gpu.py`).

Processors: the checkpoints name the real processor classes (`LlavaOnevisionProcessor`,
`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`) and hold no video processor. Where torchvision is
missing, those classes cannot be built as they are, and the engines' loader takes their
image-only twins (`engine/transformers/processors.py`), exactly as it does for the real guard
checkpoints; the tiny checkpoints therefore exercise that path too.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.dev.tiny.dims import TINY, Dims, OnevisionVision, QwenVision, TextDims
from moderator.engine.smoke import MARKER, is_smoke_test
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin

ARCHES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl")
"""Architectures `make_tiny` can build; the LlavaGuard-OV and QwenGuard model classes."""

ARCHITECTURES = {
    "llava-onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
}
"""The model class of each arch: config.json's `architectures`."""


def make_tiny(directory: Path, arch: str, *, seed: int = 0) -> Path:
    """Write a tiny random-weight checkpoint of `arch` into `directory` and return the directory.

    Same `arch` and `seed` give byte-identical weights. The directory is created if needed; an
    existing non-empty directory is only overwritten when it already holds a tiny checkpoint of
    the same arch. Raises ConfigError for an unknown arch or a directory that holds something
    else (another arch's checkpoint included), and
    ImportError when torch or transformers are missing.
    """
    if arch not in ARCHES:
        raise ConfigError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHES)}")
    return write_checkpoint(directory, TINY[arch], seed=seed)


def _marker_arch(directory: Path) -> str | None:
    """The arch a tiny checkpoint's marker records (None: no marker, or none recorded)."""
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    arch = marker.get("arch") if isinstance(marker, dict) else None
    return arch if isinstance(arch, str) else None


def write_checkpoint(
    directory: Path,
    dims: Dims,
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Write a random-weight checkpoint of `dims` into `directory` and return the directory.

    `make_tiny` is this with the `TINY` sizes. Weights are initialised on `device` in `dtype`
    (a `FULL`-size model on "cuda" in "bfloat16" takes seconds; on a CPU, minutes) and saved in
    that dtype. The overwrite rule and errors are make_tiny's.
    """
    if dims.arch not in ARCHES:
        raise ConfigError(f"unknown model arch {dims.arch!r}; choose one of {', '.join(ARCHES)}")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not is_smoke_test(directory):
        raise ConfigError(f"{directory} is not empty and holds no tiny checkpoint; not overwriting")
    held = _marker_arch(directory)
    if held is not None and held != dims.arch:  # the old arch's extra files would stay
        raise ConfigError(
            f"{directory} holds a {held} checkpoint, not {dims.arch}; not overwriting it "
            f"(use an empty directory for {dims.arch})"
        )

    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tokenizer, config = model_config(dims)
    processor = _processor(dims, tokenizer)
    text = config.get_text_config()
    target = torch.device(device)
    # A private RNG stream: the caller's torch seed state is left as it was.
    rng_devices = [target.index or 0] if target.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), target:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(  # type: ignore[no-untyped-call]  # untyped
            config, dtype=getattr(torch, dtype)
        )
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        bos_token_id=text.bos_token_id,
        do_sample=False,
    )
    directory.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        model.save_pretrained(directory)
    del model
    processor.save_pretrained(directory)
    _name_real_processor(directory, processor)
    marker: dict[str, Any] = {
        "smoke_test": True,
        "arch": dims.arch,
        "seed": seed,
        "note": "random weights: verdicts are meaningless",
    }
    if dims.name != "tiny":
        marker["sizes"] = dims.name
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return directory


def model_config(dims: Dims) -> tuple[PreTrainedTokenizerBase, PretrainedConfig]:
    """The trained tokenizer and the transformers config of `dims` (no weights: fast)."""
    from moderator.dev.tiny.tokenizer import OV_TOKENS, QWEN_TOKENS, hf_tokenizer

    tokens = OV_TOKENS if dims.arch == "llava-onevision" else QWEN_TOKENS
    tokenizer = hf_tokenizer(tokens, max_length=dims.text.max_positions)
    ids = {name: _token_id(tokenizer, tok) for name, tok in tokens.named.items()}
    text = _text_config(tokenizer, dims.text)
    if isinstance(dims.vision, OnevisionVision):
        config = _ov_config(text, ids, dims.vision)
    else:
        config = _qwen_config(dims.arch, text, ids, dims.text, dims.vision)
    config.architectures = [ARCHITECTURES[dims.arch]]
    return tokenizer, config


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar: one tiny shard needs no progress."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # untyped, as above


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"expected one id for {token!r}, got {token_id!r}")
    return token_id


def _text_config(tokenizer: PreTrainedTokenizerBase, dims: TextDims) -> dict[str, Any]:
    return {
        "vocab_size": dims.vocab_size or len(tokenizer),
        "hidden_size": dims.hidden,
        "intermediate_size": dims.intermediate,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_key_value_heads": dims.kv_heads,
        "max_position_embeddings": dims.max_positions,
        # Qwen2 has no BOS token in its prompts; its configs name <|endoftext|> anyway.
        "bos_token_id": _token_id(tokenizer, "<|endoftext|>"),
        "eos_token_id": _token_id(tokenizer, "<|im_end|>"),
        "pad_token_id": _token_id(tokenizer, "<|endoftext|>"),
        "tie_word_embeddings": dims.tie_embeddings,
    }


def _ov_config(text: dict[str, Any], ids: dict[str, int], vision: OnevisionVision) -> Any:
    from transformers import LlavaOnevisionConfig

    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": vision.hidden,
        "intermediate_size": vision.intermediate,
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.heads,
        "image_size": vision.tile,
        "patch_size": vision.patch,
        "vision_use_head": False,
    }
    return LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config={"model_type": "qwen2", **text},
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[list(pair) for pair in vision.pinpoints],
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _qwen_config(
    arch: str, text: dict[str, Any], ids: dict[str, int], dims: TextDims, vision: QwenVision
) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    if dims.mrope_section is None:
        raise ConfigError(f"{arch}: the text model needs an M-RoPE section")
    rope = {
        "rope_type": "default",
        "rope_theta": dims.rope_theta,
        "mrope_section": list(dims.mrope_section),
    }
    vision_config: dict[str, Any] = {
        "depth": vision.depth,
        "num_heads": vision.heads,
        "patch_size": vision.patch,
        "spatial_merge_size": vision.merge,
        "temporal_patch_size": vision.temporal_patch,
    }
    if arch == "qwen2-vl":
        # embed_dim is the encoder's width; hidden_size is what the merger hands the text model.
        # The MLP is sized by a whole-number ratio to the width.
        if vision.intermediate % vision.width:
            raise ConfigError(f"{arch}: the vision MLP must be a multiple of the width")
        vision_config |= {
            "embed_dim": vision.width,
            "mlp_ratio": vision.intermediate // vision.width,
            "hidden_size": dims.hidden,
        }
        config_class: Any = Qwen2VLConfig
    else:
        vision_config |= {
            "hidden_size": vision.width,
            "intermediate_size": vision.intermediate,
            "out_hidden_size": dims.hidden,
            "window_size": vision.window_size,
            "fullatt_block_indexes": list(vision.fullatt_blocks),
        }
        config_class = Qwen2_5_VLConfig
    return config_class(
        text_config={**text, "rope_parameters": rope},
        vision_config=vision_config,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _processor(dims: Dims, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    if isinstance(dims.vision, OnevisionVision):
        return _ov_processor(tokenizer, dims.vision)
    return _qwen_processor(tokenizer, dims.arch, dims.vision)


def _ov_processor(tokenizer: PreTrainedTokenizerBase, vision: OnevisionVision) -> ProcessorMixin:
    from transformers import LlavaOnevisionImageProcessorPil

    from moderator.engine.transformers.processors import ImageOnlyLlavaOnevisionProcessor

    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": vision.tile, "width": vision.tile},
        image_grid_pinpoints=[list(pair) for pair in vision.pinpoints],
        image_mean=list(vision.mean),
        image_std=list(vision.std),
    )
    processor: ProcessorMixin = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=vision.tokens_per_tile,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
        image_token="<image>",  # noqa: S106  # a vocabulary entry, not a secret
        vision_aspect_ratio="anyres_max_9",
    )
    return processor


def _qwen_processor(
    tokenizer: PreTrainedTokenizerBase, arch: str, vision: QwenVision
) -> ProcessorMixin:
    from transformers import Qwen2VLImageProcessorPil

    from moderator.engine.transformers.processors import (
        ImageOnlyQwen2_5_VLProcessor,
        ImageOnlyQwen2VLProcessor,
    )

    normalise: dict[str, Any] = {}
    if vision.mean is not None and vision.std is not None:
        normalise = {"image_mean": list(vision.mean), "image_std": list(vision.std)}
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": vision.min_pixels, "longest_edge": vision.max_pixels},
        patch_size=vision.patch,
        merge_size=vision.merge,
        temporal_patch_size=vision.temporal_patch,
        **normalise,
    )
    cls = ImageOnlyQwen2VLProcessor if arch == "qwen2-vl" else ImageOnlyQwen2_5_VLProcessor
    processor: ProcessorMixin = cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return processor


def _name_real_processor(directory: Path, processor: ProcessorMixin) -> None:
    """Write the parent class's name where the image-only twin wrote its own."""
    real = type(processor).__mro__[1].__name__
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if "processor_class" in config:
            config["processor_class"] = real
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
