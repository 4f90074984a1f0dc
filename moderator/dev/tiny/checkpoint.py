"""Tiny random-weight checkpoints of the guard-model architectures, for smoke tests.

Guard weights cannot be downloaded in tests, so `make_tiny` writes a checkpoint of the real model
class (LLaVA-OneVision, Qwen2-VL or Qwen2.5-VL) with hidden sizes of 32-128, two layers, images of
tens of tokens and a tokenizer trained here (`dev/tiny/tokenizer.py`). It loads with the generic
`AutoProcessor` / `AutoModelForImageTextToText` classes and generates, which is all an engine needs
to exercise its real loading, batching and decoding code. Its verdicts are meaningless: the
directory carries the marker of `engine/smoke.py`, which lets engines label their output.

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

from moderator.engine.smoke import MARKER, is_smoke_test
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

ARCHES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl")
"""Architectures `make_tiny` can build; the LlavaGuard-OV and QwenGuard model classes."""

# Text model shared by all three: Qwen2-style decoder, head_dim 16.
_HIDDEN = 64
# Qwen2-VL family: head_dim 64, the smallest TurboMind has attention kernels for, so the same
# tiny checkpoint can also be served by the lmdeploy engine on a GPU.
_QWEN_HIDDEN = 128
_QWEN_HEADS = 2
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_INTERMEDIATE = 128
_MAX_POSITIONS = 4096

# LLaVA-OneVision: 32 px SigLIP tiles of 8 px patches = 16 tokens per tile; up to 2x2 tiles.
_OV_TILE = 32
_OV_PATCH = 8
_OV_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]

# Qwen2-VL family: 8 px patches merged 2x2 into one token; images resized to 256..4096 pixels,
# so a 64x48 image is 8x6 patches = 12 tokens.
_QWEN_PATCH = 8
_QWEN_MERGE = 2
_QWEN_MIN_PIXELS = 16 * 16
_QWEN_MAX_PIXELS = 64 * 64


def make_tiny(directory: Path, arch: str, *, seed: int = 0) -> Path:
    """Write a tiny random-weight checkpoint of `arch` into `directory` and return the directory.

    Same `arch` and `seed` give byte-identical weights. The directory is created if needed; an
    existing non-empty directory is only overwritten when it already holds a tiny checkpoint.
    Raises ConfigError for an unknown arch or a directory that holds something else, and
    ImportError when torch or transformers are missing.
    """
    if arch not in ARCHES:
        raise ConfigError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHES)}")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not is_smoke_test(directory):
        raise ConfigError(f"{directory} is not empty and holds no tiny checkpoint; not overwriting")

    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from moderator.dev.tiny.tokenizer import OV_TOKENS, QWEN_TOKENS, hf_tokenizer

    tokens = OV_TOKENS if arch == "llava-onevision" else QWEN_TOKENS
    tokenizer = hf_tokenizer(tokens, max_length=_MAX_POSITIONS)
    ids = {name: _token_id(tokenizer, tok) for name, tok in tokens.named.items()}
    text = _text_config(tokenizer)
    if arch != "llava-onevision":
        text |= {
            "hidden_size": _QWEN_HIDDEN,
            "intermediate_size": 2 * _QWEN_HIDDEN,
            "num_attention_heads": _QWEN_HEADS,
            "num_key_value_heads": _QWEN_HEADS,
        }
    if arch == "llava-onevision":
        config = _ov_config(text, ids)
        processor = _ov_processor(tokenizer)
    else:
        config = _qwen_config(arch, text, ids)
        processor = _qwen_processor(tokenizer, arch)

    # A private RNG stream: the caller's torch seed state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(  # type: ignore[no-untyped-call]  # untyped
            config, dtype=torch.float32
        )
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
        bos_token_id=text["bos_token_id"],
        do_sample=False,
    )
    directory.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        model.save_pretrained(directory)
    processor.save_pretrained(directory)
    _name_real_processor(directory, processor)
    marker = {
        "smoke_test": True,
        "arch": arch,
        "seed": seed,
        "note": "random weights: verdicts are meaningless",
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return directory


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


def _text_config(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": _MAX_POSITIONS,
        # Qwen2 has no BOS token in its prompts; its configs name <|endoftext|> anyway.
        "bos_token_id": _token_id(tokenizer, "<|endoftext|>"),
        "eos_token_id": _token_id(tokenizer, "<|im_end|>"),
        "pad_token_id": _token_id(tokenizer, "<|endoftext|>"),
        "tie_word_embeddings": False,
    }


def _ov_config(text: dict[str, Any], ids: dict[str, int]) -> Any:
    from transformers import LlavaOnevisionConfig

    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": 2,
        "image_size": _OV_TILE,
        "patch_size": _OV_PATCH,
        "vision_use_head": False,
    }
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config={"model_type": "qwen2", **text},
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=_OV_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )


def _qwen_config(arch: str, text: dict[str, Any], ids: dict[str, int]) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    # M-RoPE splits head_dim / 2 = 32 frequencies over (time, height, width).
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}
    vision: dict[str, Any] = {
        "depth": _LAYERS,
        "num_heads": 2,
        "patch_size": _QWEN_PATCH,
        "spatial_merge_size": _QWEN_MERGE,
        "temporal_patch_size": 2,
    }
    if arch == "qwen2-vl":
        vision |= {"embed_dim": 32, "mlp_ratio": 2, "hidden_size": _QWEN_HIDDEN}
        config_class: Any = Qwen2VLConfig
    else:
        # Windows of 32 px = 2x2 merged tokens; the second block attends to the whole image.
        vision |= {
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": _QWEN_HIDDEN,
            "window_size": 32,
            "fullatt_block_indexes": [1],
        }
        config_class = Qwen2_5_VLConfig
    return config_class(
        text_config={**text, "rope_parameters": rope},
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=False,
    )


def _ov_processor(tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    from transformers import LlavaOnevisionImageProcessorPil

    from moderator.engine.transformers.processors import ImageOnlyLlavaOnevisionProcessor

    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": _OV_TILE, "width": _OV_TILE},
        image_grid_pinpoints=_OV_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],  # SigLIP's normalisation, as in the LLaVA-OV checkpoints
        image_std=[0.5, 0.5, 0.5],
    )
    processor: ProcessorMixin = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(_OV_TILE // _OV_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
        image_token="<image>",  # noqa: S106  # a vocabulary entry, not a secret
        vision_aspect_ratio="anyres_max_9",
    )
    return processor


def _qwen_processor(tokenizer: PreTrainedTokenizerBase, arch: str) -> ProcessorMixin:
    from transformers import Qwen2VLImageProcessorPil

    from moderator.engine.transformers.processors import (
        ImageOnlyQwen2_5_VLProcessor,
        ImageOnlyQwen2VLProcessor,
    )

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        patch_size=_QWEN_PATCH,
        merge_size=_QWEN_MERGE,
        temporal_patch_size=2,
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
