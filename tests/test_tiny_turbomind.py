"""The Qwen2-VL family checkpoints `make_tiny` writes fit TurboMind's limits, checked on a CPU.

TurboMind builds the Qwen2-VL / Qwen2.5-VL vision encoder with its own kernels and refuses
sizes it has no kernels for. A tiny checkpoint outside those limits fails only on a GPU
(`tests/gpu/`), which CI never has, so the limits are transcribed here as facts and every tiny
configuration (and the released Qwen2.5-VL size that `bench/gpu.py` runs) is checked against
them. Each fact names where it is in lmdeploy's source. Python facts were read in lmdeploy
0.18.0 (the version pyproject pins; the same lines are in the v0.16.0 tag of the upstream
repository). CUDA facts were read in the upstream repository at v0.16.0, its newest tag;
0.18.0's wheel ships them compiled only. When lmdeploy is installed, the Python facts are also
compared with its installed source.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from moderator.dev.tiny.checkpoint import ARCHES, ARCHITECTURES, make_tiny, model_config
from moderator.dev.tiny.dims import FULL, TINY, QwenVision

LMDEPLOY_VERSION = "0.18.0"  # pyproject's `lmdeploy` extra and requirements/lmdeploy-cpu.txt

QWEN2_VL = "Qwen2VLForConditionalGeneration"
QWEN2_5_VL = "Qwen2_5_VLForConditionalGeneration"

# lmdeploy/turbomind/supported_models.py, SUPPORTED_ARCHS: both map to the 'qwen2_vl' model,
# whose vision tower lmdeploy/turbomind/models/qwen2_vl.py builds natively
# (_VISION_MODEL_CLS: Qwen2VisionModel, Qwen2_5VisionModel). LLaVA-OneVision is not listed:
# TurboMind never builds it, so none of the limits below apply to it.
TURBOMIND_VISION_ARCHITECTURES = frozenset({QWEN2_VL, QWEN2_5_VL})

# lmdeploy/turbomind/models/qwen2_vl.py: _VIT_HEAD_DIM_PADDED has the keys 64 and 80 (80 is
# padded to 128), and _padded_vit_head_dim raises NotImplementedError ("Qwen2 ViT head_dim=...
# is not supported; known: [64, 80]") for any other size. The size is computed in
# _make_vision_attn_cfg as the encoder width // vision_config.num_heads, the width being
# vision_config.embed_dim for Qwen2-VL (Qwen2VisionModel._vision_hidden_size) and
# vision_config.hidden_size for Qwen2.5-VL (the base class's _vision_hidden_size).
VIT_HEAD_DIMS = frozenset({64, 80})

# src/turbomind/kernels/attention/kernel/: the text model's attention and decoding kernels
# exist for these head sizes only (attention_sm80_64.cu, _128, _192, _256, _576, and the
# decoding_* files alike). The head size is config.head_dim or hidden_size //
# num_attention_heads (lmdeploy/turbomind/models/utils.py, make_attention_config).
TEXT_HEAD_DIMS = frozenset({64, 128, 192, 256, 576})

# src/turbomind/models/qwenvit/qwenvit.cc, GetWindowShape: the window in merged tokens is
# window_size / spatial_merge_size / patch_size, and TM_CHECK_GT(vit_window, 0) stops the
# process when it is 0 (Qwen2.5-VL's windowed attention; Qwen2-VL has no windows).


def turbomind_problems(config: Mapping[str, Any]) -> list[str]:
    """Why TurboMind would refuse this config.json, one line each; [] when it fits."""
    arch = config["architectures"][0]
    if arch not in TURBOMIND_VISION_ARCHITECTURES:
        return [f"{arch} is not an architecture TurboMind builds"]
    problems = []
    vision = config["vision_config"]
    width = vision["embed_dim"] if arch == QWEN2_VL else vision["hidden_size"]
    heads = vision["num_heads"]
    if width % heads:
        problems.append(f"vision width {width} does not split into {heads} heads")
    elif width // heads not in VIT_HEAD_DIMS:
        problems.append(
            f"Qwen2 ViT head_dim={width // heads} is not supported; known: {sorted(VIT_HEAD_DIMS)}"
        )
    text = config.get("text_config") or config
    text_head = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if text_head not in TEXT_HEAD_DIMS:
        problems.append(f"text head_dim={text_head} has no TurboMind attention kernel")
    if arch == QWEN2_5_VL:
        window = vision["window_size"] // vision["spatial_merge_size"] // vision["patch_size"]
        if window <= 0:
            problems.append(
                f"window_size {vision['window_size']} is under one merged token "
                f"({vision['spatial_merge_size']} x {vision['patch_size']} px)"
            )
    # transformers' M-RoPE (and TurboMind's copy of it) splits head_dim / 2 frequencies over
    # time, height and width: the three sections must add up to exactly that.
    section = (text.get("rope_parameters") or {}).get("mrope_section")
    if section is None or 2 * sum(section) != text_head:
        problems.append(f"mrope_section {section} does not cover head_dim {text_head} / 2")
    return problems


def _unavailable(reason: str) -> NoReturn:
    """Skip here; fail with CI=true, where the transformers extra and lmdeploy are installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it: make install)", pytrace=False)
    pytest.skip(reason)


def _need_transformers() -> None:
    for module in ("torch", "transformers", "tokenizers"):
        if importlib.util.find_spec(module) is None:
            _unavailable(f"needs the transformers extra ({module} is missing)")


QWEN_ARCHES = [arch for arch in ARCHES if arch != "llava-onevision"]
TURBOMIND_DIMS = {
    f"{kind}-{arch}": dims
    for kind, table in (("tiny", TINY), ("full", FULL))
    for arch, dims in table.items()
    if arch in QWEN_ARCHES
}


@pytest.mark.parametrize("arch", QWEN_ARCHES)
def test_every_tiny_qwen_checkpoint_fits_turbomind(tmp_path: Path, arch: str) -> None:
    _need_transformers()
    written = make_tiny(tmp_path / arch, arch)
    config = json.loads((written / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [ARCHITECTURES[arch]]
    assert turbomind_problems(config) == []


@pytest.mark.parametrize("name", sorted(TURBOMIND_DIMS))
def test_every_qwen_size_fits_turbomind(name: str) -> None:
    """Tiny and released sizes alike, through the config transformers builds (no weights)."""
    _need_transformers()
    dims = TURBOMIND_DIMS[name]
    _tokenizer, config = model_config(dims)
    assert turbomind_problems(config.to_dict()) == []


@pytest.mark.parametrize("name", sorted(TURBOMIND_DIMS))
def test_the_dims_say_the_same_without_torch(name: str) -> None:
    dims = TURBOMIND_DIMS[name]
    vision = dims.vision
    assert isinstance(vision, QwenVision)
    assert vision.width % vision.heads == 0 and vision.head_dim in VIT_HEAD_DIMS
    assert dims.text.head_dim in TEXT_HEAD_DIMS
    assert dims.text.mrope_section is not None
    assert 2 * sum(dims.text.mrope_section) == dims.text.head_dim
    if dims.arch == "qwen2.5-vl":
        assert vision.window_size // vision.merge // vision.patch > 0


def _tiny_config(arch: str, **vision: Any) -> dict[str, Any]:
    _need_transformers()
    _tokenizer, config = model_config(TINY[arch])
    document: dict[str, Any] = config.to_dict()
    document["vision_config"].update(vision)
    return document


def test_the_check_names_the_head_size_turbomind_refused() -> None:
    # The tiny Qwen2-VL encoder before TurboMind's limits were checked: 32 wide, 2 heads.
    old = _tiny_config("qwen2-vl", embed_dim=32, num_heads=2)
    assert turbomind_problems(old) == ["Qwen2 ViT head_dim=16 is not supported; known: [64, 80]"]
    assert turbomind_problems(_tiny_config("qwen2.5-vl", hidden_size=96, num_heads=2)) == [
        "Qwen2 ViT head_dim=48 is not supported; known: [64, 80]"
    ]
    assert turbomind_problems(_tiny_config("qwen2.5-vl", hidden_size=129, num_heads=2)) == [
        "vision width 129 does not split into 2 heads"
    ]


def test_the_check_finds_a_window_under_one_token_and_other_text_heads() -> None:
    config = _tiny_config("qwen2.5-vl", window_size=8)
    assert turbomind_problems(config) == ["window_size 8 is under one merged token (2 x 8 px)"]
    config = _tiny_config("qwen2-vl")
    config["text_config"]["num_attention_heads"] = 4  # head_dim 32
    assert turbomind_problems(config) == [
        "text head_dim=32 has no TurboMind attention kernel",
        "mrope_section [8, 12, 12] does not cover head_dim 32 / 2",
    ]


def test_llava_onevision_is_not_held_to_turbomind_limits() -> None:
    config = _tiny_config("llava-onevision")
    assert config["architectures"] == ["LlavaOnevisionForConditionalGeneration"]
    assert turbomind_problems(config) == [
        "LlavaOnevisionForConditionalGeneration is not an architecture TurboMind builds"
    ]


def _lmdeploy_source(relative: str) -> Path:
    spec = importlib.util.find_spec("lmdeploy")
    if spec is None or not spec.submodule_search_locations:
        _unavailable(
            "needs lmdeploy installed (pip install --no-deps -r requirements/lmdeploy-cpu.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _module_constant(path: Path, name: str) -> Any:
    """A literal assigned at module level in `path`, read without importing the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                value = node.value
                assert value is not None
                if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "dict":
                    # dict(Key='value', ...): keyword arguments with literal values
                    return {kw.arg: ast.literal_eval(kw.value) for kw in value.keywords}
                return ast.literal_eval(value)
    raise AssertionError(f"{path} assigns no {name}")


@pytest.mark.lmdeploy
def test_the_transcribed_facts_match_the_installed_lmdeploy() -> None:
    vision_model = _lmdeploy_source("turbomind/models/qwen2_vl.py")
    assert importlib.metadata.version("lmdeploy") == LMDEPLOY_VERSION, (
        "lmdeploy's pin changed: read its limits again and update this file"
    )
    padded = _module_constant(vision_model, "_VIT_HEAD_DIM_PADDED")
    assert set(padded) == VIT_HEAD_DIMS
    supported = _module_constant(
        _lmdeploy_source("turbomind/supported_models.py"), "SUPPORTED_ARCHS"
    )
    assert {arch: supported.get(arch) for arch in TURBOMIND_VISION_ARCHITECTURES} == {
        QWEN2_VL: "qwen2_vl",
        QWEN2_5_VL: "qwen2_vl",
    }
    assert "LlavaOnevisionForConditionalGeneration" not in supported
