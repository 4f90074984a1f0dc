"""The `lmdeploy` engine end to end on TurboMind: CUDA machines with lmdeploy's CUDA build.

Builds a tiny random-weight checkpoint of each QwenGuard architecture (Qwen2-VL, Qwen2.5-VL),
starts the engine through every start-up check (so TurboMind really was built, vision encoder
included) and judges four images. The verdicts are meaningless; what is tested is that
TurboMind loads the checkpoint, takes the image-first messages and the schema, and that every
result parses with a score in [0, 1] or None. tests/test_tiny_turbomind.py keeps the tiny sizes
inside TurboMind's limits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image, ImageFile

from moderator.engine.base import EngineRequest
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings, GenerationSettings, LmdeploySettings
from tests.gpu.conftest import need_modules

pytestmark = [pytest.mark.gpu, pytest.mark.lmdeploy]


def _turbomind_skip_reason() -> str | None:
    from moderator.engine.lmdeploy.startup import import_lmdeploy

    try:
        import_lmdeploy()
        from lmdeploy import turbomind
    except Exception as exc:  # any import failure means: not usable here
        return f"needs lmdeploy's CUDA build: {type(exc).__name__}: {exc}"
    if not turbomind.is_available():
        return f"TurboMind's CUDA extension did not import: {turbomind._import_error}"
    return None


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    need_modules("transformers")
    reason = _turbomind_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from moderator.dev.tiny.checkpoint import make_tiny
    from moderator.engine.lmdeploy.engine import LmdeployEngine

    arch: str = request.param
    model_dir = make_tiny(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
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


def test_four_images_end_to_end_on_turbomind(engine: object) -> None:
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
        assert result.generation["input_tokens"] > 0


def test_pillow_stays_strict_once_turbomind_runs(engine: object) -> None:
    # lmdeploy sets LOAD_TRUNCATED_IMAGES when its image module is imported; the engine undoes
    # it, or truncated uploads would decode instead of ending as corrupt_image.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
