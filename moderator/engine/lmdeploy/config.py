"""What the `lmdeploy` engine decides before LMDeploy is imported: which checkpoint, whether it
is a QwenGuard architecture TurboMind serves, and how our settings map onto LMDeploy's configs.

Everything here is plain Python over config files and settings (no lmdeploy, no torch), so the
start-up decisions are testable anywhere. The `*_kwargs` functions return the keyword arguments
of lmdeploy 0.18's `TurbomindEngineConfig`, `VisionConfig` and `GenerationConfig`; the engine
module builds the objects from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moderator.engine.guard.schema import response_format
from moderator.errors import ConfigError
from moderator.settings import GenerationSettings, LmdeploySettings

TURBOMIND_ARCHITECTURES = (
    "Qwen2VLForConditionalGeneration",  # QwenGuard-v1.2-7B
    "Qwen2_5_VLForConditionalGeneration",  # QwenGuard-v1.2-3B
)
"""QwenGuard architectures this engine runs; both are in TurboMind's `SUPPORTED_ARCHS`."""

ONEVISION_ARCHITECTURES = (
    "LlavaOnevisionForConditionalGeneration",  # LlavaGuard-v1.2-*-OV-hf
    "LlavaQwenForCausalLM",  # LlavaGuard-v1.2-*-OV (non-hf, SGLang's format)
)

INPUT_SIZE = 1024
"""Longest image side handed to a Qwen2-VL model. Qwen2-VL spends one visual token per 28x28
pixels, so 1024 px is at most ~1,340 tokens: beside a ~1k-token policy that stays well inside
the default 12k session and keeps the KV cache of a full TurboMind batch small, while leaving
the detail a moderation decision needs. Decoding downsizes to about this before the model's own
processor resizes to its patch grid."""


def checkpoint_dir(model: str | None) -> Path:
    """The local checkpoint directory engine.model names (LMDeploy would download anything else)."""
    if not model:
        raise ConfigError(
            "engine.model is required for engine.kind=lmdeploy: a QwenGuard checkpoint directory"
        )
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"engine.model: no checkpoint directory at {path} "
            "(weights are never downloaded: put the checkpoint there)"
        )
    return path


def checkpoint_architecture(model_dir: Path) -> str:
    """`architectures[0]` of the checkpoint's config.json; ConfigError (one line) otherwise."""
    if not model_dir.is_dir():
        raise ConfigError(f"engine.model: no checkpoint directory at {model_dir}")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"engine.model: no config.json in {model_dir}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"engine.model: cannot read {config_file}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"engine.model: {config_file} is not valid JSON") from exc
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list) or not architectures:
        raise ConfigError(f"engine.model: {config_file} has no architectures list")
    first = architectures[0]
    if not isinstance(first, str) or not first:
        raise ConfigError(f"engine.model: {config_file} architectures[0] is not a class name")
    return first


def check_architecture(model_dir: Path) -> str:
    """The checkpoint's architecture if this engine runs it; ConfigError saying what to use."""
    arch = checkpoint_architecture(model_dir)
    if arch in TURBOMIND_ARCHITECTURES:
        return arch
    if arch in ONEVISION_ARCHITECTURES:
        raise ConfigError(
            f"engine.kind=lmdeploy cannot serve {model_dir}: {arch} (LLaVA-OneVision) runs on no "
            "LMDeploy engine; use engine.kind=transformers, or engine.kind=openai with a vLLM or "
            "SGLang server"
        )
    raise ConfigError(
        f"engine.kind=lmdeploy cannot serve {model_dir}: architecture {arch} is not a QwenGuard "
        f"checkpoint (accepted: {', '.join(TURBOMIND_ARCHITECTURES)})"
    )


def engine_config_kwargs(settings: LmdeploySettings) -> dict[str, Any]:
    """`TurbomindEngineConfig` keyword arguments for engine.lmdeploy.*.

    `model_format` is left out when unset so TurboMind reads it from the checkpoint.
    `enable_prefix_caching` (TurboMind's default is off) lets a scoring request reuse the KV
    blocks of its item's prompt: lmdeploy 0.18's `VLAsyncEngine.__init__` keeps it on for
    TurboMind native-vision models such as Qwen2-VL (it switches it off only for other VL paths).
    """
    kwargs: dict[str, Any] = {
        "max_batch_size": settings.max_batch_size,
        "cache_max_entry_count": settings.cache_max_entry_count,
        "session_len": settings.session_len,
        "tp": settings.tp,
        "quant_policy": settings.quant_policy,
        "enable_prefix_caching": settings.enable_prefix_caching,
    }
    if settings.model_format is not None:
        kwargs["model_format"] = settings.model_format
    return kwargs


def vision_config_kwargs(settings: LmdeploySettings) -> dict[str, Any]:
    """`VisionConfig` keyword arguments: how many images the vision encoder takes at once."""
    return {"max_batch_size": settings.vision_batch_size}


def logprobs_are_exact(gen: GenerationSettings) -> bool:
    """Whether TurboMind's reported log-probabilities are the model's own distribution.

    TurboMind records them after temperature, the grammar mask and the top-k/top-p cut, from the
    renormalised distribution it samples from. Greedy decoding is top-k 1, so each step then
    reports only the chosen token at log 1 = 0. Only plain sampling at temperature 1, top-p 1,
    no top-k and no schema leaves the distribution untouched.
    """
    return gen.temperature == 1.0 and gen.top_p == 1.0 and not gen.structured


def generation_config_kwargs(
    gen: GenerationSettings, schema: dict[str, Any] | None, top_logprobs: int | None
) -> dict[str, Any]:
    """`GenerationConfig` keyword arguments for one request.

    Temperature 0 is greedy (`do_sample=False`, `top_k=1`, as LMDeploy itself sets for greedy).
    Sampling passes `top_k=0` (no top-k cut: our settings have none, and LMDeploy's default of
    50 would add one silently) and the seed, if any. `schema` becomes an OpenAI-style
    `response_format` (TurboMind compiles `json_schema.schema` with xgrammar); `top_logprobs`
    asks for that many log-probabilities per generated token.
    """
    kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens}
    if gen.temperature == 0:
        kwargs.update(do_sample=False, top_k=1)
    else:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=0)
        if gen.seed is not None:
            kwargs["random_seed"] = gen.seed
    if schema is not None:
        kwargs["response_format"] = response_format(schema)
    if top_logprobs is not None:
        kwargs["logprobs"] = top_logprobs
    return kwargs


def scoring_config_kwargs(top_logprobs: int) -> dict[str, Any]:
    """`GenerationConfig` keyword arguments for a scoring request (one token, raw distribution).

    What each field does in lmdeploy 0.18 / TurboMind:

    - `do_sample=True`: `AsyncEngine._determine_gen_config` replaces top-k with 1 (greedy) when
      `do_sample` is false, which would leave one candidate.
    - `temperature=1.0`: `LogitsProcessor::Setup` (src/turbomind/generation/logits_processor.cc)
      scales logits only when the temperature is not 1; `repetition_penalty` stays 1.0 and
      `min_new_tokens` unset, so no other penalty touches them; no `response_format`, so
      `GuidedDecoding::FillMask` gives this row an all-ones bitmask (no grammar mask).
    - `top_k=top_logprobs`: `topKSortStage2` (src/turbomind/kernels/sampling_topk_kernels.cu)
      keeps the k largest logits and writes their softmax over those k, `exp(l_i - l_max) /
      sum_k`; `sampling` (sampling_kernels.cu) then records `logf` of each kept probability.
      So every reported log-probability is the raw one minus the same constant `log Z_k`, and
      the score, which depends only on the difference of two of them, is exact. `top_k=0` (no
      top-k: `topKSortStage1` skips the row, the full-vocabulary softmax and sort run instead)
      would report the raw softmax itself, but `topp_beam_topk_kernel`
      (sampling_topp_kernels.cu) keeps only the top token when its float32 probability
      reaches `top_p`, i.e. rounds to 1.0 at `top_p=1`: a confident model (all other tokens
      below ~6e-8 together) would then report a single token and get no score.
    - `top_p=1.0`, `min_p=0`: `topPMinPFilter` leaves the row as it is.
    - `logprobs=top_logprobs`: `_get_logprobs_impl` (lmdeploy/turbomind/turbomind.py) returns
      the first `min(kept, logprobs)` of those sorted candidates, plus the sampled token.
    - `ignore_eos=True`: `AsyncEngine.generate` drops the log-probabilities of a step whose
      token is a stop token (`outputs.logprobs[:-hit_stop_token]`); with `ignore_eos` it has no
      stop ids, so the one step is always returned. With `max_new_tokens=1` nothing else
      changes (TurboMind uses `eos_ids` only for `min_new_tokens`).
    """
    return {
        "max_new_tokens": 1,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": top_logprobs,
        "logprobs": top_logprobs,
        "ignore_eos": True,
    }


def input_size(model_dir: Path, default: int = INPUT_SIZE) -> int:
    """`default`, or less when the checkpoint's image processor allows fewer pixels.

    Qwen2-VL processors carry a pixel budget (`max_pixels`, or `size.longest_edge` in newer
    saves); a square of that many pixels is the largest side worth decoding to.
    """
    budget = _pixel_budget(model_dir)
    if budget is None:
        return default
    return max(28, min(default, math.isqrt(budget)))


def _pixel_budget(model_dir: Path) -> int | None:
    sources = (("preprocessor_config.json", None), ("processor_config.json", "image_processor"))
    for name, section in sources:
        try:
            doc = json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if section is not None:
            doc = doc.get(section) if isinstance(doc, dict) else None
        if not isinstance(doc, dict):
            continue
        size = doc.get("size")
        longest = size.get("longest_edge") if isinstance(size, dict) else None
        for value in (doc.get("max_pixels"), longest):
            if isinstance(value, int) and value > 0:
                return value
    return None
