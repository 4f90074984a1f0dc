"""The `lmdeploy` engine end to end on TurboMind: CUDA machines only.

Builds a tiny random-weight Qwen2-VL checkpoint, starts the engine through every start-up check
(so TurboMind really was built) and judges four images. The verdicts are meaningless; what is
tested is that TurboMind loads the checkpoint, takes the image-first messages and the schema, and
that every result parses with a score in [0, 1] or None.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from moderator.engine.base import EngineRequest
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings, GenerationSettings, LmdeploySettings

pytestmark = [pytest.mark.gpu, pytest.mark.lmdeploy]


def _turbomind_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "needs torch"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        from lmdeploy import turbomind
    except Exception as exc:  # any import failure means: not usable here
        return f"needs lmdeploy's CUDA build: {type(exc).__name__}: {exc}"
    if not turbomind.is_available():
        return f"TurboMind's CUDA extension did not import: {turbomind._import_error}"
    return None


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    reason = _turbomind_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from moderator.dev.tiny.checkpoint import make_tiny
    from moderator.engine.lmdeploy.engine import LmdeployEngine

    model_dir = make_tiny(tmp_path_factory.mktemp("tiny-qwen2-vl"), "qwen2-vl")
    settings = EngineSettings(
        kind="lmdeploy",
        model=str(model_dir),
        generation=GenerationSettings(max_new_tokens=128, rationale_max_chars=64),
        lmdeploy=LmdeploySettings(
            max_batch_size=8, session_len=2048, cache_max_entry_count=0.05, vision_batch_size=4
        ),
    )
    started = LmdeployEngine(settings)
    yield started
    started.close()


def test_four_images_end_to_end_on_turbomind(engine: object, tmp_path: Path) -> None:
    from moderator.engine.lmdeploy.engine import LmdeployEngine
    from moderator.engine.lmdeploy.startup import turbomind_problem

    assert isinstance(engine, LmdeployEngine)
    assert turbomind_problem(engine._pipe) is None  # the start-up verification, once more
    assert engine.info.engine == "lmdeploy" and engine.info.smoke_test is True
    colours = [(250, 250, 250), (10, 10, 10), (200, 30, 30), (30, 30, 200)]
    batch = [
        EngineRequest(f"r{i}", Image.new("RGB", (64, 48), c), "Assess the image.", CATEGORIES)
        for i, c in enumerate(colours)
    ]
    results = engine.classify(batch)
    assert len(results) == 4
    for result in results:
        # Schema-constrained decoding: random weights still produce a verdict that parses (cut
        # off at max_new_tokens at worst, which the parser marks as truncated).
        assert result.error_code is None, (result.error_code, result.error_message)
        assert result.assessment is not None
        assert result.assessment.category in CATEGORIES
        score = result.assessment.score
        assert score is None or 0.0 <= score <= 1.0
        assert result.generation["backend"] == "turbomind"
