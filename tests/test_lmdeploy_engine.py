"""The `lmdeploy` engine on CPU: start-up decisions, config mapping, request building, results.

Tests without a marker need nothing but the package. Tests marked `lmdeploy` need lmdeploy
importable (on CPU: `pip install --no-deps -r requirements/lmdeploy-cpu.txt` after the
`transformers` extra) and run lmdeploy's own code: the real `is_supported`, config classes,
message processing and backend selection. On a CPU machine TurboMind's CUDA extension cannot
load, which is exactly the situation in which lmdeploy silently falls back to its PyTorch
engine, so the fallback is exercised for real here. Nothing here runs TurboMind itself;
tests/gpu/test_lmdeploy_turbomind.py does, on a CUDA machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import math
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest
from PIL import Image, ImageFile

from moderator.engine.base import EngineRequest
from moderator.engine.guard.schema import verdict_schema
from moderator.engine.guard.score import TokenLogprob, normalised_unsafe, score_from_token_logprobs
from moderator.engine.lmdeploy.config import (
    INPUT_SIZE,
    TURBOMIND_ARCHITECTURES,
    check_architecture,
    checkpoint_architecture,
    checkpoint_dir,
    engine_config_kwargs,
    generation_config_kwargs,
    input_size,
    logprobs_are_exact,
    scoring_config_kwargs,
    vision_config_kwargs,
)
from moderator.engine.lmdeploy.engine import (
    TOP_LOGPROBS,
    LmdeployEngine,
    LmdeployEngineClosed,
    lmdeploy_messages,
)
from moderator.engine.lmdeploy.score import token_logprobs
from moderator.engine.lmdeploy.startup import (
    LMDEPLOY_MISSING,
    import_lmdeploy,
    preflight,
    turbomind_problem,
    verify_turbomind,
)
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings, GenerationSettings, LmdeploySettings

QWEN2_VL = ("Qwen2VLForConditionalGeneration", "qwen2_vl")
QWEN2_5_VL = ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl")
ONEVISION = ("LlavaOnevisionForConditionalGeneration", "llava_onevision")
F = TypeVar("F", bound=Callable[..., Any])


def _lmdeploy_skip_reason() -> str | None:
    try:
        import_lmdeploy()
    except Exception as exc:  # any import failure means: not usable here
        return (
            "needs lmdeploy importable (pip install --no-deps -r requirements/lmdeploy-cpu.txt "
            f"after the transformers extra): {type(exc).__name__}: {exc}"
        )
    return None


@pytest.fixture
def lmdeploy_available() -> Iterator[None]:
    reason = _lmdeploy_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    strict = ImageFile.LOAD_TRUNCATED_IMAGES
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = strict  # lmdeploy's Pillow side effect must not leak


def needs_lmdeploy(test: F) -> F:
    """Mark `lmdeploy` and skip, saying why, when lmdeploy cannot be imported here."""
    marked: F = pytest.mark.lmdeploy(pytest.mark.usefixtures("lmdeploy_available")(test))
    return marked


def _config_dir(root: Path, arch: tuple[str, str], **extra: Any) -> Path:
    """A directory holding only a config.json, as far as is_supported needs to look."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {"architectures": [arch[0]], "model_type": arch[1], **extra}
    (root / "config.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


# --- checkpoint and architecture (pure) ----------------------------------------------------------


@pytest.mark.parametrize("arch", [QWEN2_VL, QWEN2_5_VL, ONEVISION])
def test_checkpoint_architecture_reads_config_json(tmp_path: Path, arch: tuple[str, str]) -> None:
    assert checkpoint_architecture(_config_dir(tmp_path, arch)) == arch[0]


@pytest.mark.parametrize("arch", [QWEN2_VL, QWEN2_5_VL])
def test_qwenguard_architectures_are_accepted(tmp_path: Path, arch: tuple[str, str]) -> None:
    assert check_architecture(_config_dir(tmp_path, arch)) == arch[0]
    assert arch[0] in TURBOMIND_ARCHITECTURES


@pytest.mark.parametrize("name", ["LlavaOnevisionForConditionalGeneration", "LlavaQwenForCausalLM"])
def test_llava_onevision_is_rejected_with_the_engines_that_serve_it(
    tmp_path: Path, name: str
) -> None:
    model_dir = _config_dir(tmp_path, (name, "llava_onevision"))
    with pytest.raises(ConfigError) as err:
        check_architecture(model_dir)
    message = str(err.value)
    assert "\n" not in message
    assert str(model_dir) in message and "LLaVA-OneVision" in message
    assert "engine.kind=transformers" in message
    assert "engine.kind=openai" in message and "vLLM" in message and "SGLang" in message


def test_other_architectures_are_rejected(tmp_path: Path) -> None:
    model_dir = _config_dir(tmp_path, ("InternVLChatModel", "internvl_chat"))
    with pytest.raises(ConfigError, match="InternVLChatModel is not a QwenGuard checkpoint"):
        check_architecture(model_dir)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "engine.model: no config.json in "),
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        ("[1, 2]", "has no architectures list"),
        ('{"model_type": "qwen2_vl"}', "has no architectures list"),
        ('{"architectures": []}', "has no architectures list"),
        ('{"architectures": [7]}', "architectures[0] is not a class name"),
    ],
)
def test_unusable_config_json_is_one_clear_line(
    tmp_path: Path, content: str | bytes | None, expected: str
) -> None:
    if isinstance(content, str):
        (tmp_path / "config.json").write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        checkpoint_architecture(tmp_path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_checkpoint_dir_must_be_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engine\.model is required for engine\.kind=lmdeploy"):
        checkpoint_dir(None)
    with pytest.raises(ConfigError, match=r"no checkpoint directory at .*never downloaded"):
        checkpoint_dir("AIML-TUDA/QwenGuard-v1.2-3B")
    with pytest.raises(ConfigError, match="no checkpoint directory"):
        checkpoint_architecture(tmp_path / "missing")
    assert checkpoint_dir(str(tmp_path)) == tmp_path


# --- settings → LMDeploy config keyword arguments (pure) -----------------------------------------


def test_engine_config_kwargs_map_every_setting() -> None:
    assert engine_config_kwargs(LmdeploySettings()) == {
        "max_batch_size": 64,
        "cache_max_entry_count": 0.8,
        "session_len": 12_288,
        "tp": 1,
        "quant_policy": 0,
        "enable_prefix_caching": True,
    }
    custom = LmdeploySettings(
        max_batch_size=128,
        cache_max_entry_count=0.5,
        session_len=8192,
        tp=2,
        quant_policy=8,
        model_format="awq",
        enable_prefix_caching=False,
    )
    assert engine_config_kwargs(custom) == {
        "max_batch_size": 128,
        "cache_max_entry_count": 0.5,
        "session_len": 8192,
        "tp": 2,
        "quant_policy": 8,
        "enable_prefix_caching": False,
        "model_format": "awq",
    }


def test_vision_config_kwargs() -> None:
    assert vision_config_kwargs(LmdeploySettings(vision_batch_size=16)) == {"max_batch_size": 16}


def test_greedy_generation_kwargs() -> None:
    gen = GenerationSettings(max_new_tokens=300, seed=5)
    assert generation_config_kwargs(gen, None, None) == {
        "max_new_tokens": 300,
        "do_sample": False,
        "top_k": 1,
    }


def test_sampling_generation_kwargs_have_no_top_k_cut_and_the_seed() -> None:
    gen = GenerationSettings(temperature=0.2, top_p=0.95, seed=11)
    kwargs = generation_config_kwargs(gen, None, 20)
    assert kwargs == {
        "max_new_tokens": 512,
        "do_sample": True,
        "temperature": 0.2,
        "top_p": 0.95,
        "top_k": 0,
        "random_seed": 11,
        "logprobs": 20,
    }
    assert "random_seed" not in generation_config_kwargs(
        GenerationSettings(temperature=1.0), None, None
    )


def test_schema_becomes_lmdeploys_json_schema_response_format() -> None:
    schema = verdict_schema(CATEGORIES, 800)
    kwargs = generation_config_kwargs(GenerationSettings(), schema, None)
    body = kwargs["response_format"]
    assert body["type"] == "json_schema"
    assert body["json_schema"]["name"] == "verdict"
    assert body["json_schema"]["schema"] is schema


@pytest.mark.parametrize(
    ("gen", "exact"),
    [
        (GenerationSettings(), False),  # greedy: top-k 1, each step reports only the chosen token
        (GenerationSettings(temperature=1.0), False),  # the schema's grammar mask renormalises
        (GenerationSettings(temperature=1.0, structured=False), True),
        (GenerationSettings(temperature=0.7, structured=False), False),
        (GenerationSettings(temperature=1.0, top_p=0.9, structured=False), False),
    ],
)
def test_logprobs_are_exact_only_for_the_untouched_distribution(
    gen: GenerationSettings, exact: bool
) -> None:
    assert logprobs_are_exact(gen) is exact


def test_input_size_follows_the_processor_pixel_budget(tmp_path: Path) -> None:
    assert input_size(tmp_path) == INPUT_SIZE == 1024
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"max_pixels": 12_845_056, "min_pixels": 3136}), encoding="utf-8"
    )
    assert input_size(tmp_path) == 1024
    small = tmp_path / "small"
    small.mkdir()
    (small / "processor_config.json").write_text(
        json.dumps({"image_processor": {"size": {"longest_edge": 4096, "shortest_edge": 256}}}),
        encoding="utf-8",
    )
    assert input_size(small) == 64


# --- request building and log-probabilities (pure) -----------------------------------------------


def test_messages_put_the_image_before_the_policy_text() -> None:
    image = Image.new("RGB", (8, 6), (1, 2, 3))
    messages = lmdeploy_messages("the policy", image)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    image_part, text_part = messages[0]["content"]
    assert image_part == {"type": "image_data", "image_data": {"data": image}}
    assert image_part["image_data"]["data"] is image
    assert text_part == {"type": "text", "text": "the policy"}


def test_messages_convert_other_modes_to_rgb() -> None:
    image = Image.new("RGBA", (8, 6), (1, 2, 3, 4))
    data = lmdeploy_messages("p", image)[0]["content"][0]["image_data"]["data"]
    assert data.mode == "RGB" and data.size == (8, 6)


_VOCAB = {1: '{"rating": "', 2: "Unsafe", 3: "Safe", 4: '", "category": "O1"}', 5: "Un"}


def _decode(token: int) -> str:
    return _VOCAB[token]


def test_token_logprobs_decode_and_rank_each_step() -> None:
    steps = [{1: -0.01}, {3: -1.5, 2: -0.3, 5: -4.0}, {4: 0.0}]
    tokens = token_logprobs([1, 2, 4], steps, _decode)
    assert tokens == [
        TokenLogprob('{"rating": "', -0.01, (('{"rating": "', -0.01),)),
        TokenLogprob("Unsafe", -0.3, (("Unsafe", -0.3), ("Safe", -1.5), ("Un", -4.0))),
        TokenLogprob('", "category": "O1"}', 0.0, (('", "category": "O1"}', 0.0),)),
    ]
    assert tokens is not None
    score = score_from_token_logprobs(tokens)
    assert score == pytest.approx(normalised_unsafe(-0.3, -1.5))


def test_token_logprobs_refuse_what_does_not_line_up() -> None:
    assert token_logprobs([1, 2], [{1: -0.1}], _decode) is None
    assert token_logprobs([1], None, _decode) is None
    assert token_logprobs([1], [], _decode) is None
    missing = token_logprobs([1, 2], [{1: -0.1}, {3: -0.2}], _decode)
    assert missing is not None and math.isnan(missing[1].logprob)
    assert score_from_token_logprobs(missing) is None


# --- lmdeploy missing (pure: lmdeploy is blocked from importing) ---------------------------------


def test_missing_lmdeploy_is_one_line_after_the_architecture_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lmdeploy", None)
    with pytest.raises(ConfigError) as err:
        preflight(_config_dir(tmp_path / "qwen", QWEN2_VL))
    assert str(err.value) == LMDEPLOY_MISSING
    assert LMDEPLOY_MISSING == (
        "engine.kind=lmdeploy needs lmdeploy on a CUDA machine: pip install lmdeploy"
    )
    with pytest.raises(ConfigError, match="LLaVA-OneVision"):
        preflight(_config_dir(tmp_path / "ov", ONEVISION))


def test_engine_without_a_model_fails_before_importing_lmdeploy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "lmdeploy", None)
    with pytest.raises(ConfigError, match=r"engine\.model is required"):
        LmdeployEngine(EngineSettings(kind="lmdeploy"))


# --- lmdeploy's own code on CPU ------------------------------------------------------------------


@needs_lmdeploy
def test_importing_lmdeploy_leaves_pillow_strict_about_truncated_files() -> None:
    import io

    from lmdeploy.vl.media import image as lmdeploy_image

    source = inspect.getsource(lmdeploy_image)
    assert "ImageFile.LOAD_TRUNCATED_IMAGES = True" in source  # why import_lmdeploy exists
    import_lmdeploy()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, format="JPEG")
    data = buffer.getvalue()
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(OSError):
        truncated.load()


@needs_lmdeploy
@pytest.mark.parametrize(
    ("arch", "served"), [(QWEN2_VL, True), (QWEN2_5_VL, True), (ONEVISION, False)]
)
def test_real_is_supported_agrees_with_our_architecture_list(
    tmp_path: Path, arch: tuple[str, str], served: bool
) -> None:
    from lmdeploy.turbomind.supported_models import is_supported

    assert is_supported(str(_config_dir(tmp_path, arch))) is served
    assert (arch[0] in TURBOMIND_ARCHITECTURES) is served


@needs_lmdeploy
def test_real_config_objects_take_our_settings() -> None:
    from dataclasses import fields

    from lmdeploy import GenerationConfig, TurbomindEngineConfig, VisionConfig
    from lmdeploy._guided_decoding import ensure_response_format_compilable

    settings = LmdeploySettings(
        max_batch_size=32,
        cache_max_entry_count=0.5,
        session_len=8192,
        quant_policy=8,
        vision_batch_size=4,
        model_format="awq",
    )
    engine_kwargs = engine_config_kwargs(settings)
    assert set(engine_kwargs) <= {f.name for f in fields(TurbomindEngineConfig)}
    turbomind = TurbomindEngineConfig(**engine_kwargs)
    assert (turbomind.max_batch_size, turbomind.cache_max_entry_count) == (32, 0.5)
    assert (turbomind.session_len, turbomind.tp, int(turbomind.quant_policy)) == (8192, 1, 8)
    assert turbomind.model_format == "awq"
    assert turbomind.enable_prefix_caching is True
    assert VisionConfig(**vision_config_kwargs(settings)).max_batch_size == 4

    schema = verdict_schema(CATEGORIES, 1200)
    greedy = GenerationConfig(**generation_config_kwargs(GenerationSettings(), schema, None))
    assert (greedy.do_sample, greedy.top_k, greedy.max_new_tokens) == (False, 1, 512)
    assert greedy.logprobs is None
    ensure_response_format_compilable(greedy.response_format)  # xgrammar compiles our schema

    gen = GenerationSettings(temperature=1.0, structured=False, seed=3)
    sampled = GenerationConfig(**generation_config_kwargs(gen, None, TOP_LOGPROBS))
    assert (sampled.do_sample, sampled.top_k, sampled.top_p, sampled.temperature) == (
        True,
        0,
        1.0,
        1.0,
    )
    assert (sampled.random_seed, sampled.logprobs, sampled.response_format) == (3, 20, None)


@needs_lmdeploy
def test_lmdeploy_parses_our_messages_image_first() -> None:
    from lmdeploy.serve.processors import MultimodalProcessor

    image = Image.new("RGB", (16, 16), (9, 9, 9))
    messages = lmdeploy_messages("the policy", image)
    assert MultimodalProcessor.format_prompts(messages) is messages  # taken as OpenAI messages
    parsed = asyncio.run(MultimodalProcessor.async_parse_multimodal_item(messages))
    content = parsed[0]["content"]
    assert [part["type"] for part in content] == ["image", "text"]
    assert content[0]["data"] is image
    assert content[1]["text"] == "the policy"


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2-VL checkpoint (built once per module)."""
    reason = _lmdeploy_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from moderator.dev.tiny.checkpoint import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-qwen2-vl"), "qwen2-vl")


def _image_only_processor(path: str, **_: Any) -> Any:
    from moderator.engine.transformers.processors import IMAGE_ONLY, processor_class

    return IMAGE_ONLY[processor_class(Path(path)) or ""].from_pretrained(
        path, local_files_only=True
    )


def _multimodal_processor(model_dir: Path) -> Any:
    """lmdeploy's own MultimodalProcessor for `model_dir`, on TurboMind's code path.

    The encoder is loaded as for the PyTorch backend only because loading it for TurboMind asks
    CUDA for free memory first. Qwen2-VL runs its vision tower inside TurboMind (native vision),
    so on either backend the encoder only preprocesses, and the processor below takes
    TurboMind's branch. Without torchvision (the CPU test set-up), transformers cannot build the
    Qwen2-VL processor's video half, so lmdeploy's one `AutoProcessor.from_pretrained` call gets
    the image-only twin the transformers engine uses; the rest is lmdeploy's code.
    """
    import transformers
    from lmdeploy.messages import PytorchEngineConfig, VisionConfig
    from lmdeploy.model import get_chat_template
    from lmdeploy.serve.processors import MultimodalProcessor
    from lmdeploy.tokenizer import Tokenizer
    from lmdeploy.vl.engine import ImageEncoder

    path = str(model_dir)
    with contextlib.ExitStack() as stack:
        if importlib.util.find_spec("torchvision") is None:
            stack.enter_context(
                mock.patch.object(
                    transformers.AutoProcessor, "from_pretrained", _image_only_processor
                )
            )
        encoder = ImageEncoder(
            path, "pytorch", VisionConfig(max_batch_size=4), backend_config=PytorchEngineConfig()
        )
    assert encoder.model._turbomind_native_vision
    return MultimodalProcessor(
        Tokenizer(path), get_chat_template(path, None), vl_encoder=encoder, backend="turbomind"
    )


@needs_lmdeploy
def test_real_turbomind_preprocessing_renders_the_image_before_the_policy(
    tiny_qwen: Path,
) -> None:
    processor = _multimodal_processor(tiny_qwen)
    image = Image.new("RGB", (64, 48), (200, 10, 10))
    messages = lmdeploy_messages("POLICY TEXT", image)
    out = asyncio.run(processor.get_prompt_input(prompt=messages, do_preprocess=True))
    prompt = out["prompt"]
    assert prompt.index("<|vision_start|><|image_pad|><|vision_end|>") < prompt.index("POLICY")
    assert prompt.endswith("<|im_start|>assistant\n")
    image_token = json.loads((tiny_qwen / "config.json").read_text())["image_token_id"]
    assert out["input_ids"].count(image_token) == 12  # 64x48 px: 8x6 patches of 8 px, merged 2x2


@needs_lmdeploy
def test_preflight_refuses_when_the_turbomind_extension_did_not_import(tmp_path: Path) -> None:
    from lmdeploy import turbomind

    if turbomind.is_available():
        pytest.skip("TurboMind's CUDA extension imports here; integration/ covers this machine")
    model_dir = _config_dir(tmp_path, QWEN2_VL)
    with pytest.raises(ConfigError) as err:
        preflight(model_dir)
    message = str(err.value)
    assert "\n" not in message and str(model_dir) in message
    assert "TurboMind extension did not import" in message
    assert str(turbomind._import_error).splitlines()[0] in message
    assert "fall back to its PyTorch engine" in message


@needs_lmdeploy
def test_lmdeploy_falls_back_silently_where_preflight_refuses(tmp_path: Path) -> None:
    """On this CPU machine lmdeploy's own backend choice shows the fallback we guard against."""
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig, turbomind
    from lmdeploy.archs import autoget_backend_config

    if turbomind.is_available():
        pytest.skip("TurboMind's CUDA extension imports here: no fallback to observe")
    model_dir = _config_dir(tmp_path, QWEN2_VL)
    asked = TurbomindEngineConfig(**engine_config_kwargs(LmdeploySettings()))
    backend, config = autoget_backend_config(str(model_dir), asked)
    assert backend == "pytorch"
    assert isinstance(config, PytorchEngineConfig)
    assert (config.max_batch_size, config.session_len) == (64, 12_288)  # carried over, silently
    with pytest.raises(ConfigError, match="TurboMind extension did not import"):
        preflight(model_dir)


@needs_lmdeploy
def test_preflight_makes_autoget_backends_decision_and_refuses_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmdeploy import turbomind
    from lmdeploy.archs import autoget_backend

    monkeypatch.setattr(turbomind, "is_available", lambda: True)  # as on a CUDA machine
    served = _config_dir(tmp_path / "served", QWEN2_5_VL)
    assert autoget_backend(str(served)) == "turbomind"
    assert preflight(served) == QWEN2_5_VL[0]
    quant = {"quant_method": "smooth_quant"}
    refused = _config_dir(tmp_path / "refused", QWEN2_VL, quantization_config=quant)
    assert autoget_backend(str(refused)) == "pytorch"
    with pytest.raises(ConfigError) as err:
        preflight(refused)
    assert "is_supported is false" in str(err.value) and str(refused) in str(err.value)


# --- backend verification against test doubles of the built pipeline ----------------------------


class TurboMindDouble:
    """Stands in for lmdeploy.turbomind.TurboMind, whose CUDA extension cannot load on CPU."""


class PytorchEngineDouble:
    """Stands in for the PyTorch engine object lmdeploy builds when it falls back."""


class AsyncEngineViewDouble:
    """What check 4 reads of `pipe.async_engine`: `backend`, `engine`, `vl_encoder`."""

    def __init__(self, backend: str, engine: object, vl_encoder: object | None) -> None:
        self.backend = backend
        self.engine = engine
        if vl_encoder is not None:
            self.vl_encoder = vl_encoder


class PipelineViewDouble:
    """What check 4 reads of a built Pipeline: `async_engine` and `backend_config`."""

    def __init__(self, async_engine: object, backend_config: object) -> None:
        self.async_engine = async_engine
        self.backend_config = backend_config
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def turbomind_double(monkeypatch: pytest.MonkeyPatch) -> type[TurboMindDouble]:
    from lmdeploy import turbomind

    monkeypatch.setattr(turbomind, "TurboMind", TurboMindDouble, raising=False)
    return TurboMindDouble


def _fallback_pipeline(model_dir: Path) -> PipelineViewDouble:
    """A pipeline double holding what lmdeploy really chose for `model_dir` on this machine."""
    from lmdeploy import TurbomindEngineConfig
    from lmdeploy.archs import autoget_backend_config

    backend, config = autoget_backend_config(str(model_dir), TurbomindEngineConfig())
    return PipelineViewDouble(
        AsyncEngineViewDouble(backend, PytorchEngineDouble(), object()), config
    )


@needs_lmdeploy
def test_verification_catches_the_real_fallback(tmp_path: Path) -> None:
    from lmdeploy import turbomind

    if turbomind.is_available():
        pytest.skip("TurboMind's CUDA extension imports here: lmdeploy does not fall back")
    model_dir = _config_dir(tmp_path, QWEN2_VL)
    fallback = _fallback_pipeline(model_dir)
    assert (
        turbomind_problem(fallback) == "LMDeploy built its pytorch engine instead (silent fallback)"
    )
    with pytest.raises(ConfigError) as err:
        verify_turbomind(fallback, model_dir)
    assert str(err.value) == (
        f"engine.kind=lmdeploy: LMDeploy did not build TurboMind for {model_dir}: "
        "LMDeploy built its pytorch engine instead (silent fallback)"
    )


@needs_lmdeploy
def test_verification_checks_each_recorded_fact(turbomind_double: type[TurboMindDouble]) -> None:
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig

    good = PipelineViewDouble(
        AsyncEngineViewDouble("turbomind", turbomind_double(), object()), TurbomindEngineConfig()
    )
    assert turbomind_problem(good) is None
    wrong_config = PipelineViewDouble(good.async_engine, PytorchEngineConfig())
    assert "PytorchEngineConfig, not a TurbomindEngineConfig" in str(
        turbomind_problem(wrong_config)
    )
    wrong_engine = PipelineViewDouble(
        AsyncEngineViewDouble("turbomind", PytorchEngineDouble(), object()), TurbomindEngineConfig()
    )
    assert turbomind_problem(wrong_engine) == (
        "the engine object is PytorchEngineDouble, not lmdeploy.turbomind.TurboMind"
    )
    text_only = PipelineViewDouble(
        AsyncEngineViewDouble("turbomind", turbomind_double(), None), TurbomindEngineConfig()
    )
    assert turbomind_problem(text_only) == "LMDeploy built a text-only pipeline (no vision encoder)"
    assert "no async_engine" in str(turbomind_problem(object()))


@needs_lmdeploy
def test_without_the_extension_no_engine_object_passes_as_turbomind() -> None:
    from lmdeploy import TurbomindEngineConfig, turbomind

    if turbomind.is_available():
        pytest.skip("TurboMind's CUDA extension imports here")
    assert not hasattr(turbomind, "TurboMind")
    lookalike = PipelineViewDouble(
        AsyncEngineViewDouble("turbomind", TurboMindDouble(), object()), TurbomindEngineConfig()
    )
    assert "not lmdeploy.turbomind.TurboMind" in str(turbomind_problem(lookalike))


@needs_lmdeploy
def test_engine_start_closes_a_pipeline_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.engine.lmdeploy import startup as lmdeploy_startup

    model_dir = _config_dir(tmp_path, QWEN2_VL)
    built: list[PipelineViewDouble] = []

    def build(directory: Path, settings: LmdeploySettings) -> PipelineViewDouble:
        built.append(_fallback_pipeline(directory))
        return built[-1]

    monkeypatch.setattr(lmdeploy_startup, "preflight", lambda directory: QWEN2_VL[0])
    monkeypatch.setattr(lmdeploy_startup, "build_pipeline", build)
    with pytest.raises(ConfigError, match="did not build TurboMind"):
        LmdeployEngine(EngineSettings(kind="lmdeploy", model=str(model_dir)))
    assert built[0].closed == 1


@needs_lmdeploy
def test_engine_start_on_this_machine_fails_with_one_line(tmp_path: Path) -> None:
    from lmdeploy import turbomind

    if turbomind.is_available():
        pytest.skip("TurboMind's CUDA extension imports here")
    model_dir = _config_dir(tmp_path, QWEN2_VL)
    with pytest.raises(ConfigError, match="TurboMind extension did not import"):
        LmdeployEngine(EngineSettings(kind="lmdeploy", model=str(model_dir)))


# --- classify on a pipeline double: real preprocessing, scripted generation ----------------------


class LoopThreadDouble:
    """Mirrors `Pipeline.internal_thread`: a daemon thread running the pipeline's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class AsyncEngineDouble:
    """Mirrors the parts of lmdeploy 0.18's AsyncEngine the engine uses.

    `preprocess` runs lmdeploy's real MultimodalProcessor on the tiny checkpoint and returns a
    real PreprocessedRequest; `generate` yields real GenOut objects the way AsyncEngine does for
    `stream_response=False` (the text with its ids and logprobs, then a closing GenOut with the
    finish reason), scripted by a word in the policy text. `session_mgr` and `tokenizer` are
    lmdeploy's own.

    A scoring request (`max_new_tokens == 1`) gets one token and the first
    `gen_config.logprobs` entries of `SCORING_STEP` (raw log-probabilities, highest first) plus
    the sampled token, as TurboMind's `_get_logprobs_impl` returns them; `SCOREFAIL` in the
    policy makes it raise, `SCOREABORT` abort, and `NARROW` report the top token only. Every
    scoring request's rendered prompt and token ids are kept in `scoring_inputs`.
    """

    SCORING_STEP = (("Unsafe", -0.4), ("Safe", -1.2), ("S", -3.0), ("U", -4.5))

    def __init__(self, model_dir: Path, parties: int | None = None) -> None:
        from lmdeploy.serve.managers import SessionManager

        self.prompt_processor = _multimodal_processor(model_dir)
        self.tokenizer = self.prompt_processor.tokenizer
        self.session_mgr = SessionManager()
        self.backend = "turbomind"
        self.gen_configs: list[Any] = []
        self.barrier = asyncio.Barrier(parties) if parties else None
        self.unsafe_id = self.tokenizer.encode("Unsafe", add_bos=False)[0]
        self.safe_id = self.tokenizer.encode("Safe", add_bos=False)[0]
        self.main_inputs: list[dict[str, Any]] = []
        self.scoring_inputs: list[dict[str, Any]] = []

    async def preprocess(self, messages: Any, session_id: Any, gen_config: Any) -> Any:
        from lmdeploy.serve.core.async_engine import PreprocessedRequest
        from lmdeploy.serve.core.exceptions import ErrorCode as LmdeployCode
        from lmdeploy.serve.core.exceptions import RequestError

        self.gen_configs.append(gen_config)
        if "FAIL-PREPROCESS" in messages[0]["content"][1]["text"]:
            self.session_mgr.remove(session_id)
            raise RequestError(LmdeployCode.PREPROCESS_FAILED, "bad image")
        inputs = await self.prompt_processor.get_prompt_input(prompt=messages, do_preprocess=True)
        kept = {"prompt": inputs["prompt"], "input_ids": list(inputs["input_ids"])}
        scoring = gen_config.max_new_tokens == 1
        (self.scoring_inputs if scoring else self.main_inputs).append(kept)
        return PreprocessedRequest(
            session=session_id,
            inputs=inputs,
            input_token_len=len(inputs["input_ids"]),
            gen_config=gen_config,
            adapter_name=None,
        )

    async def generate(self, request: Any, stream_response: bool = True) -> AsyncIterator[Any]:
        from lmdeploy.serve.core.async_engine import GenOut
        from lmdeploy.serve.core.exceptions import ErrorCode as LmdeployCode
        from lmdeploy.serve.core.exceptions import RequestError

        assert stream_response is False
        try:
            if request.gen_config.max_new_tokens == 1:
                async for out in self._score(request):
                    yield out
                return
            if self.barrier is not None:
                await asyncio.wait_for(self.barrier.wait(), timeout=20)
            prompt = request.inputs["prompt"]
            word = next(w for w in ("UNSAFE", "SAFE", "GARBAGE", "ABORT", "RAISE") if w in prompt)
            if word == "RAISE":
                raise RequestError(LmdeployCode.INTERNAL_ERROR)
            text = {
                "UNSAFE": '{"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", '
                '"rationale": "scripted"}',
                "SAFE": '{"rating": "Safe", "category": "NA: None applying", "rationale": "ok"}',
                "GARBAGE": "I cannot judge this image.",
                "ABORT": '{"rating": "Sa',
            }[word]
            ids = self.tokenizer.encode(text, add_bos=False)
            steps = [self._step(token) for token in ids]
            n = request.input_token_len
            yield GenOut(text, n, len(ids), None, token_ids=ids, logprobs=steps)
            finish = "abort" if word == "ABORT" else "stop"
            yield GenOut("", n, len(ids), finish, token_ids=[], logprobs=None)
        finally:
            self.session_mgr.remove(request.session)

    async def _score(self, request: Any) -> AsyncIterator[Any]:
        from lmdeploy.serve.core.async_engine import GenOut
        from lmdeploy.serve.core.exceptions import ErrorCode as LmdeployCode
        from lmdeploy.serve.core.exceptions import RequestError

        prompt = request.inputs["prompt"]
        if "SCOREFAIL" in prompt:
            raise RequestError(LmdeployCode.INTERNAL_ERROR)
        n = request.input_token_len
        ranked = [(self.tokenizer.encode(t, add_bos=False)[0], lp) for t, lp in self.SCORING_STEP]
        top = 1 if "NARROW" in prompt else request.gen_config.logprobs
        step = dict(ranked[:top])
        sampled = ranked[0][0]
        yield GenOut("Unsafe", n, 1, None, token_ids=[sampled], logprobs=[step])
        finish = "abort" if "SCOREABORT" in prompt else "length"
        yield GenOut("", n, 1, finish, token_ids=[], logprobs=None)

    def _step(self, token: int) -> dict[int, float]:
        if token in (self.unsafe_id, self.safe_id):
            return {self.unsafe_id: -0.2, self.safe_id: -1.8}
        return {token: -0.05}


class PipelineDouble:
    """Mirrors what LmdeployEngine reads of a built Pipeline: async_engine, internal_thread."""

    def __init__(self, async_engine: AsyncEngineDouble) -> None:
        self.async_engine = async_engine
        self.internal_thread = LoopThreadDouble()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1
        self.internal_thread.close()


@pytest.fixture
def make_engine(tiny_qwen: Path) -> Iterator[Callable[..., tuple[LmdeployEngine, PipelineDouble]]]:
    engines: list[LmdeployEngine] = []

    def make(
        generation: GenerationSettings | None = None,
        parties: int | None = None,
        lmdeploy: LmdeploySettings | None = None,
    ) -> tuple[LmdeployEngine, PipelineDouble]:
        settings = EngineSettings(
            kind="lmdeploy",
            model=str(tiny_qwen),
            generation=generation or GenerationSettings(),
            lmdeploy=lmdeploy or LmdeploySettings(),
        )
        pipe = PipelineDouble(AsyncEngineDouble(tiny_qwen, parties))
        engine = LmdeployEngine(settings, pipe)
        engines.append(engine)
        return engine, pipe

    yield make
    for engine in engines:
        engine.close()


def _request(i: int, prompt: str, categories: tuple[str, ...] = CATEGORIES) -> EngineRequest:
    return EngineRequest(
        f"r{i}", Image.new("RGB", (64, 48), (i * 40 % 256, 9, 9)), prompt, categories
    )


@needs_lmdeploy
def test_engine_info_and_input_size(make_engine: Callable[..., Any], tiny_qwen: Path) -> None:
    engine, _ = make_engine()
    assert engine.info.engine == "lmdeploy"
    assert engine.info.name == str(tiny_qwen)
    assert engine.info.categories == ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9")
    assert engine.info.smoke_test is True  # the tiny checkpoint's marker file
    assert engine.input_size == 64  # the tiny processor's 4096-pixel budget


@needs_lmdeploy
def test_a_batch_is_submitted_at_once_and_each_item_stands_alone(
    make_engine: Callable[..., Any],
) -> None:
    prompts = ["UNSAFE", "FAIL-PREPROCESS", "SAFE", "GARBAGE", "ABORT", "RAISE"]
    # Only the items that get past preprocessing reach generate; all of them must be in flight
    # together before any may finish.
    engine, pipe = make_engine(parties=5)
    results = engine.classify([_request(i, p) for i, p in enumerate(prompts)])
    unsafe, bad_image, safe, garbage, aborted, raised = results

    assert unsafe.assessment is not None and unsafe.assessment.rating == "Unsafe"
    assert unsafe.assessment.category == "O2: Violence, Harm, or Cruelty"
    # Greedy decoding's logprobs are degenerate: the score comes from each item's scoring request.
    assert unsafe.assessment.score == pytest.approx(normalised_unsafe(-0.4, -1.2))
    assert safe.assessment is not None and safe.assessment.rating == "Safe"
    assert safe.assessment.score == pytest.approx(normalised_unsafe(-0.4, -1.2))
    assert len(pipe.async_engine.scoring_inputs) == 2  # only the two items with a rating
    assert bad_image.error_code == ErrorCode.ENGINE_ERROR
    assert bad_image.error_message == "lmdeploy: preprocess_failed: bad image"
    assert garbage.error_code == ErrorCode.UNPARSEABLE_OUTPUT
    assert garbage.raw_output == "I cannot judge this image."
    assert aborted.error_code == ErrorCode.ENGINE_ERROR
    assert aborted.error_message == "lmdeploy finished the request with 'abort'"
    assert raised.error_code == ErrorCode.ENGINE_ERROR
    assert raised.error_message.startswith("lmdeploy: internal_error:")
    assert pipe.async_engine.session_mgr.sessions == {}

    record = unsafe.generation
    assert record["engine"] == "lmdeploy" and record["backend"] == "turbomind"
    assert record["batch_size"] == 6 and record["top_logprobs"] is None
    assert record["finish_reason"] == "stop" and record["output_tokens"] > 0
    assert record["input_tokens"] > 12  # the policy text plus 12 image tokens
    assert record["max_new_tokens"] == 512 and record["temperature"] == 0.0
    assert record["score_method"] == "scoring_request" and record["score_reason"] is None
    assert record["score_top_logprobs"] == 20
    assert "score_method" not in raised.generation  # an error verdict has no score


@needs_lmdeploy
def test_default_requests_are_greedy_and_schema_constrained(
    make_engine: Callable[..., Any],
) -> None:
    engine, pipe = make_engine()
    few = ("O1: Hate, Humiliation, Harassment", "NA: None applying")
    engine.classify([_request(0, "SAFE"), _request(1, "SAFE", few), _request(2, "SAFE")])
    configs = [c for c in pipe.async_engine.gen_configs if c.max_new_tokens != 1]
    assert all(c.do_sample is False and c.top_k == 1 and c.logprobs is None for c in configs)
    schemas = [c.response_format["json_schema"]["schema"] for c in configs]
    assert schemas[0]["properties"]["category"]["enum"] == list(CATEGORIES)
    assert schemas[1]["properties"]["category"]["enum"] == list(few)
    assert configs[0] is configs[2]  # one GenerationConfig per category set


@needs_lmdeploy
def test_score_from_logprobs_when_they_are_the_models_own(
    make_engine: Callable[..., Any],
) -> None:
    gen = GenerationSettings(temperature=1.0, structured=False, seed=1)
    engine, pipe = make_engine(gen)
    unsafe, safe = engine.classify([_request(0, "UNSAFE"), _request(1, "SAFE")])
    expected = normalised_unsafe(-0.2, -1.8)
    assert unsafe.assessment is not None and unsafe.assessment.score == pytest.approx(expected)
    assert safe.assessment is not None and safe.assessment.score == pytest.approx(expected)
    config = pipe.async_engine.gen_configs[0]
    assert (config.logprobs, config.do_sample, config.top_k, config.response_format) == (
        TOP_LOGPROBS,
        True,
        0,
        None,
    )
    assert unsafe.generation["top_logprobs"] == TOP_LOGPROBS
    assert unsafe.generation["score_method"] == "generation_logprobs"
    assert unsafe.generation["score_top_logprobs"] is None
    assert pipe.async_engine.scoring_inputs == []  # no extra request where logprobs are raw


@needs_lmdeploy
def test_scoring_request_continues_the_answer_at_the_rating_value(
    make_engine: Callable[..., Any],
) -> None:
    engine, pipe = make_engine(lmdeploy=LmdeploySettings(score_top_logprobs=3))
    engine.classify([_request(0, "UNSAFE")])
    double = pipe.async_engine
    [main] = double.main_inputs
    [scoring] = double.scoring_inputs
    # lmdeploy's real chat template and TurboMind preprocessing rendered the partial answer as
    # the start of the assistant turn: nothing after it, no <|im_end|>.
    assert main["prompt"].endswith("<|im_start|>assistant\n")
    assert scoring["prompt"] == main["prompt"] + '{"rating": "'
    assert scoring["prompt"].count("<|im_end|>") == main["prompt"].count("<|im_end|>")
    # The same tokens as the item's own prompt, then the partial answer's: prefix caching can
    # reuse the item's KV blocks.
    answer = double.tokenizer.encode('{"rating": "', add_bos=False)
    assert scoring["input_ids"] == main["input_ids"] + answer
    config = next(c for c in double.gen_configs if c.max_new_tokens == 1)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 1.0, 1.0, 3)
    assert (config.logprobs, config.ignore_eos, config.response_format) == (3, True, None)


@needs_lmdeploy
def test_scoring_failures_cost_only_the_score(make_engine: Callable[..., Any]) -> None:
    engine, pipe = make_engine()
    prompts = ["UNSAFE SCOREFAIL", "SAFE SCOREABORT", "UNSAFE NARROW", "GARBAGE", "SAFE"]
    failed, aborted, narrow, garbage, fine = engine.classify(
        [_request(i, p) for i, p in enumerate(prompts)]
    )
    for result, reason in (
        (failed, "scoring request failed"),
        (aborted, "scoring request failed"),
        (narrow, "not in top-N"),
    ):
        assert result.error_code is None and result.assessment is not None
        assert result.assessment.score is None
        assert (result.generation["score_method"], result.generation["score_reason"]) == (
            "none",
            reason,
        )
    assert failed.assessment is not None and failed.assessment.rating == "Unsafe"
    assert garbage.error_code == ErrorCode.UNPARSEABLE_OUTPUT
    assert garbage.generation["score_reason"] == "rating not found"
    assert fine.assessment is not None and fine.assessment.score is not None
    assert len(pipe.async_engine.scoring_inputs) == 4  # none for the answer without a rating
    assert pipe.async_engine.session_mgr.sessions == {}


@needs_lmdeploy
@pytest.mark.parametrize(
    ("generation", "lmdeploy"),
    [
        (GenerationSettings(score=False), LmdeploySettings()),
        (GenerationSettings(), LmdeploySettings(score_request=False)),
    ],
)
def test_no_scoring_request_when_switched_off(
    make_engine: Callable[..., Any], generation: GenerationSettings, lmdeploy: LmdeploySettings
) -> None:
    engine, pipe = make_engine(generation, lmdeploy=lmdeploy)
    [result] = engine.classify([_request(0, "UNSAFE")])
    assert result.assessment is not None and result.assessment.score is None
    assert (result.generation["score_method"], result.generation["score_reason"]) == (
        "none",
        "disabled",
    )
    assert result.generation["score_top_logprobs"] is None
    assert pipe.async_engine.scoring_inputs == []


@needs_lmdeploy
def test_lmdeploy_keeps_the_scoring_configs_distribution(tiny_qwen: Path) -> None:
    """lmdeploy's own request normalisation leaves top-k, temperature and logprobs alone
    (with `do_sample=False` it would have replaced top-k by 1)."""
    from types import SimpleNamespace

    from lmdeploy import GenerationConfig
    from lmdeploy.serve.core.async_engine import AsyncEngine
    from lmdeploy.tokenizer import Tokenizer

    host = SimpleNamespace(
        tokenizer=Tokenizer(str(tiny_qwen)), stop_words=None, hf_gen_cfg={}, session_len=4096
    )
    scoring = GenerationConfig(**scoring_config_kwargs(20))
    decided = AsyncEngine._determine_gen_config(host, [1, 2, 3], scoring)
    assert (decided.top_k, decided.top_p, decided.temperature, decided.min_p) == (20, 1.0, 1.0, 0.0)
    assert (decided.max_new_tokens, decided.logprobs, decided.ignore_eos) == (1, 20, True)
    assert (decided.repetition_penalty, decided.min_new_tokens, decided.bad_token_ids) == (
        1.0,
        None,
        None,
    )
    assert decided.response_format is None and decided.random_seed is not None
    greedy = GenerationConfig(**{**scoring_config_kwargs(20), "do_sample": False})
    assert AsyncEngine._determine_gen_config(host, [1, 2, 3], greedy).top_k == 1


@needs_lmdeploy
def test_concurrent_batches_share_one_loop(make_engine: Callable[..., Any]) -> None:
    engine, _ = make_engine(parties=6)
    results: dict[int, list[Any]] = {}

    def run(k: int) -> None:
        results[k] = engine.classify([_request(2 * k, "UNSAFE"), _request(2 * k + 1, "SAFE")])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [0, 1, 2]
    for pair in results.values():
        assert [r.assessment.rating for r in pair] == ["Unsafe", "Safe"]


@needs_lmdeploy
def test_close_closes_the_pipeline_once(make_engine: Callable[..., Any]) -> None:
    engine, pipe = make_engine()
    assert engine.classify([]) == []
    engine.close()
    engine.close()
    assert pipe.closed == 1
    with pytest.raises(LmdeployEngineClosed):
        engine.classify([_request(0, "SAFE")])
