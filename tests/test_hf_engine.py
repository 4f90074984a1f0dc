"""The transformers engine on tiny random-weight checkpoints: the real loading and generate code."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.dev.tiny.checkpoint import make_tiny
from moderator.engine.base import EngineRequest
from moderator.engine.factory import build_engine
from moderator.engine.guard.schema import verdict_schema
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

pytestmark = pytest.mark.transformers

PROMPT = "Assess the image against the policy.\nO1: Hate, Humiliation, Harassment: should not ..."


@pytest.fixture(scope="module")
def hf() -> Any:
    pytest.importorskip("torch", reason="needs the transformers extra (torch)")
    pytest.importorskip("xgrammar", reason="needs the transformers extra (xgrammar)")
    return pytest.importorskip("transformers", reason="needs the transformers extra")


@pytest.fixture(scope="module")
def tiny(hf: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-engine")
    return {arch: make_tiny(root / arch, arch) for arch in ("llava-onevision", "qwen2-vl")}


def settings(model: Path, **generation: Any) -> EngineSettings:
    gen = {"max_new_tokens": 80, "rationale_max_chars": 48, **generation}
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(model),
            # One thread: tiny matrices gain nothing from more, and lose a lot when cores are busy.
            "transformers": {"device": "cpu", "threads": 1, "warmup": False},
            "generation": gen,
        }
    )


def requests(n: int) -> list[EngineRequest]:
    sizes = [(64, 48), (40, 90), (120, 120), (33, 17)]
    return [
        EngineRequest(
            f"r{i}", Image.new("RGB", sizes[i % 4], (30 * i, 200 - 20 * i, 90)), PROMPT, CATEGORIES
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("arch", ["llava-onevision", "qwen2-vl"])
def test_constrained_batch_always_parses_with_scores(tiny: dict[str, Path], arch: str) -> None:
    engine = build_engine(settings(tiny[arch]))
    try:
        assert engine.info.engine == "transformers"
        assert engine.info.smoke_test is True
        assert engine.info.categories == ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9")
        results = engine.classify(requests(4))
    finally:
        engine.close()
    assert len(results) == 4
    for result in results:
        assert result.error_code is None, result.error_message
        assert result.assessment is not None
        assert result.assessment.category in CATEGORIES
        assert result.assessment.score is not None
        assert 0.0 <= result.assessment.score <= 1.0
        assert result.raw_output is not None and result.raw_output.startswith('{"rating": "')
        gen = result.generation
        assert gen["temperature"] == 0.0 and gen["structured"] is True
        assert gen["engine"] == "transformers" and gen["batch_size"] == 4


def test_score_matches_a_brute_force_computation(hf: Any, tiny: dict[str, Path]) -> None:
    """P(Unsafe) recomputed independently: full forward passes over prompt + prefix + word."""

    from moderator.engine.transformers.engine import TransformersEngine

    engine = TransformersEngine(settings(tiny["qwen2-vl"]))
    request = requests(1)[0]
    result = engine.classify([request])[0]
    assert result.assessment is not None and result.assessment.score is not None
    schema = verdict_schema(CATEGORIES, engine.generation.rationale_max_chars)
    row = engine.generate(request.prompt, request.image, engine.generation, schema)
    assert row.text == result.raw_output
    loaded = engine._loaded
    tokenizer = engine.tokenizer
    r = row.text.index('"rating": "') + len('"rating": "')
    # k: the step whose token covers the rating's first character; lead: that token's text before it
    k = next(i for i in range(len(row.ids)) if len(tokenizer.decode(row.ids[: i + 1])) > r)
    lead = row.text[len(tokenizer.decode(row.ids[:k])) : r]
    inputs = loaded.processor(text=[row.rendered], images=[request.image], return_tensors="pt")

    def logprob(word: str) -> float:
        cont = tokenizer.encode(lead + word, add_special_tokens=False)
        return brute_force_logprob(loaded, inputs, [*row.ids[:k]], cont)

    unsafe, safe = logprob("Unsafe"), logprob("Safe")
    expected = math.exp(unsafe) / (math.exp(unsafe) + math.exp(safe))
    assert result.assessment.score == pytest.approx(expected, rel=1e-3, abs=1e-9)


def brute_force_logprob(loaded: Any, inputs: Any, prefix: list[int], cont: list[int]) -> float:
    """log P(cont | prompt + prefix) from one full forward pass (no cache, all logits kept)."""
    import torch

    batch = dict(inputs)
    n = len(prefix) + len(cont)
    tail = torch.tensor([[*prefix, *cont]])
    batch["input_ids"] = torch.cat([inputs["input_ids"], tail], dim=1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros((1, n), dtype=inputs["mm_token_type_ids"].dtype)
        batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    with torch.inference_mode():
        logits = loaded.model(**batch).logits[0].float().log_softmax(-1)
    start = int(inputs["input_ids"].shape[1]) + len(prefix)
    return sum(float(logits[start - 1 + j, t]) for j, t in enumerate(cont))


@pytest.mark.parametrize("arch", ["llava-onevision", "qwen2-vl"])
def test_row_scorer_teacher_forces_multi_token_words(tiny: dict[str, Path], arch: str) -> None:
    """The extra forward pass used when a rating word takes several tokens."""
    from moderator.engine.transformers.engine import TransformersEngine
    from moderator.engine.transformers.score import RowScorer

    engine = TransformersEngine(settings(tiny[arch]))
    request = requests(1)[0]
    rendered = engine.render(request.prompt)
    prefix = engine.tokenizer.encode('{"rating": "', add_special_tokens=False)
    cont = engine.tokenizer.encode("Un", add_special_tokens=False) + engine.tokenizer.encode(
        "safe", add_special_tokens=False
    )
    assert len(cont) >= 2
    got = RowScorer(engine._loaded, rendered, request.image).continuation_logprob(prefix, cont)
    inputs = engine._loaded.processor(text=[rendered], images=[request.image], return_tensors="pt")
    assert got == pytest.approx(brute_force_logprob(engine._loaded, inputs, prefix, cont), abs=1e-4)


def test_unconstrained_output_is_parsed_or_kept_raw(tiny: dict[str, Path]) -> None:
    engine = build_engine(settings(tiny["llava-onevision"], structured=False, max_new_tokens=24))
    results = engine.classify(requests(2))
    for result in results:
        assert result.raw_output is not None
        if result.assessment is None:
            assert result.error_code is ErrorCode.UNPARSEABLE_OUTPUT
        assert result.generation["structured"] is False


def test_greedy_is_deterministic_and_seeded_sampling_repeats(tiny: dict[str, Path]) -> None:
    greedy = build_engine(settings(tiny["qwen2-vl"]))
    first = [r.raw_output for r in greedy.classify(requests(2))]
    assert [r.raw_output for r in greedy.classify(requests(2))] == first
    sampled = build_engine(settings(tiny["qwen2-vl"], temperature=0.9, top_p=0.9, seed=5))
    one = [r.raw_output for r in sampled.classify(requests(2))]
    assert [r.raw_output for r in sampled.classify(requests(2))] == one


def test_tile_cap_shrinks_the_image_token_count(tiny: dict[str, Path]) -> None:
    from moderator.engine.transformers import load as hf_load

    base = settings(tiny["llava-onevision"])
    capped = base.model_copy(
        update={"transformers": base.transformers.model_copy(update={"max_image_tiles": 1})}
    )
    image = Image.new("RGB", (64, 64), (1, 2, 3))
    lengths = []
    for s in (base, capped):
        loaded = hf_load.load(s)
        inputs = loaded.processor(text=["<image>\nx"], images=[image], return_tensors="pt")
        lengths.append(int(inputs["input_ids"].shape[1]))
        assert (
            loaded.model.config.image_grid_pinpoints
            == loaded.processor.image_processor.image_grid_pinpoints
        )
    assert lengths[1] < lengths[0]
    capped_engine = build_engine(capped)
    assert capped_engine.classify(requests(1))[0].assessment is not None


def test_warm_up_sets_ready(tiny: dict[str, Path]) -> None:
    from moderator.engine.transformers.engine import TransformersEngine

    base = settings(tiny["qwen2-vl"])
    warm = base.model_copy(
        update={"transformers": base.transformers.model_copy(update={"warmup": True})}
    )
    engine = TransformersEngine(warm)
    assert engine.ready
    assert engine.warm_up() > 0


def test_missing_extra_is_one_line(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.engine.transformers.load import TRANSFORMERS_MISSING

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError) as caught:
        build_engine(settings(tiny["qwen2-vl"]))
    assert str(caught.value) == TRANSFORMERS_MISSING


def test_directory_without_weights_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2VLForConditionalGeneration"]}')
    with pytest.raises(ConfigError, match=r"engine.model: .* has no weights \(model.safetensors"):
        build_engine(settings(tmp_path))


@pytest.mark.parametrize("missing", ["tokenizer.json", "model.safetensors"])
def test_a_checkpoint_missing_a_file_names_it(
    tiny: dict[str, Path], tmp_path: Path, missing: str
) -> None:
    """transformers' own error for a missing tokenizer names no file; the check before
    loading does, for the engine and for a training run's base_model alike."""
    from moderator.training.finetune.inputs import checkpoint_class

    broken = tmp_path / "broken"
    shutil.copytree(tiny["llava-onevision"], broken)
    (broken / missing).unlink()
    what = "tokenizer" if missing.startswith("tokenizer") else "weights"
    with pytest.raises(ConfigError, match=rf"engine.model: {broken} has no {what} \(.*{missing}"):
        build_engine(settings(broken))
    with pytest.raises(ConfigError, match=rf"base_model: {broken} has no {what} "):
        checkpoint_class(broken)


def test_the_first_line_of_a_load_error_keeps_what_its_colon_introduces() -> None:
    from moderator.engine.transformers.load import _first_line

    error = ValueError("Cannot load one of:\n\n(1) tokenizer.json, \n(2) a slow tokenizer\nmore")
    assert _first_line(error) == "Cannot load one of: (1) tokenizer.json,"
    assert _first_line(ValueError("")) == "ValueError"


def test_pinpoint_cap_keeps_the_single_tile() -> None:
    from moderator.engine.transformers.load import cap_pinpoints

    grid = [[384, 384], [384, 768], [768, 384], [768, 768], [1152, 1152]]
    assert cap_pinpoints(grid, 384, 1) == [[384, 384]]
    assert cap_pinpoints(grid, 384, 4) == grid[:4]
    assert cap_pinpoints([[768, 768]], 384, 1) == [[384, 384]]
