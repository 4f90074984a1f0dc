"""The fake engine: deterministic verdicts, configured rates, failures the window isolates."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from moderator.engine.base import EngineRequest
from moderator.engine.factory import NUDENET_MISSING, build_engine, build_window
from moderator.engine.fake import RATIONALE, FakeEngine, FakeEngineFailure
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES, NONE_APPLYING
from moderator.settings import EngineSettings, FakeEngineSettings


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (4, 4), color=(i % 256, i // 256 % 256, 7))


def _request(i: int) -> EngineRequest:
    return EngineRequest(f"r{i}", _image(i), "prompt", ())


def test_same_image_same_assessment_across_instances() -> None:
    settings = FakeEngineSettings(unsafe_rate=0.5, seed=3)
    first, second = FakeEngine(settings), FakeEngine(settings)
    batch = [_request(i) for i in range(50)]
    assert first.classify(batch) == second.classify(list(reversed(batch)))[::-1]
    copy = _image(7).copy()
    assert first.assess(copy) == second.assess(_image(7))


def test_seed_changes_the_draws() -> None:
    one = FakeEngine(FakeEngineSettings(unsafe_rate=0.5, seed=1))
    two = FakeEngine(FakeEngineSettings(unsafe_rate=0.5, seed=2))
    assert [one.assess(_image(i)) for i in range(50)] != [two.assess(_image(i)) for i in range(50)]


def test_rates_are_roughly_respected() -> None:
    engine = FakeEngine(FakeEngineSettings(unsafe_rate=0.3, failure_rate=0.2, seed=0))
    images = [_image(i) for i in range(1000)]
    unsafe = [a for a in map(engine.assess, images) if a.rating == "Unsafe"]
    failing = sum(map(engine.fails, images))
    assert 250 <= len(unsafe) <= 350
    assert 150 <= failing <= 250
    assert len({a.category for a in unsafe}) == 9  # every O1..O9 category turns up


def test_assessments_are_consistent() -> None:
    engine = FakeEngine(FakeEngineSettings(unsafe_rate=0.5))
    for result in engine.classify([_request(i) for i in range(200)]):
        a = result.assessment
        assert a is not None and a.score is not None
        assert a.category in CATEGORIES
        assert a.rationale == RATIONALE
        if a.rating == "Unsafe":
            assert a.category != NONE_APPLYING and a.score >= 0.5
        else:
            assert a.category == NONE_APPLYING and a.score < 0.5
        assert result.raw_output is not None and a.rating in result.raw_output


def test_extreme_rates() -> None:
    never = FakeEngine(FakeEngineSettings(unsafe_rate=0.0, failure_rate=0.0))
    always = FakeEngine(FakeEngineSettings(unsafe_rate=1.0, failure_rate=1.0))
    images = [_image(i) for i in range(100)]
    assert all(never.assess(im).rating == "Safe" and not never.fails(im) for im in images)
    assert all(always.assess(im).rating == "Unsafe" and always.fails(im) for im in images)


def test_failing_subset_raises_whenever_in_the_batch() -> None:
    engine = FakeEngine(FakeEngineSettings(failure_rate=0.1))
    failing = [i for i in range(200) if engine.fails(_image(i))]
    good = [i for i in range(200) if i not in failing][:8]
    assert failing
    assert len(engine.classify([_request(i) for i in good])) == len(good)
    with pytest.raises(FakeEngineFailure, match=f"r{failing[0]}"):
        engine.classify([_request(good[0]), _request(failing[0]), _request(good[1])])


def test_latency_is_per_batch() -> None:
    engine = FakeEngine(FakeEngineSettings(latency_ms=50))
    started = time.monotonic()
    engine.classify([_request(i) for i in range(4)])
    assert time.monotonic() - started >= 0.045


def test_info() -> None:
    engine = FakeEngine(FakeEngineSettings())
    assert engine.info.engine == "fake" and engine.info.smoke_test is True
    assert engine.info.categories == ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9")
    assert engine.input_size == 448


def test_window_isolates_fake_failures() -> None:
    settings = EngineSettings(
        kind="fake",
        batch_size=8,
        max_wait_ms=2,
        retries=1,
        fake=FakeEngineSettings(failure_rate=0.2),
    )
    engine = build_engine(settings)
    assert isinstance(engine, FakeEngine)
    window = build_window(engine, settings)
    try:
        futures = [window.submit(_request(i)) for i in range(100)]
        for i, future in enumerate(futures):
            result = future.result(timeout=10).result
            if engine.fails(_image(i)):
                assert result.error_code is ErrorCode.ENGINE_ERROR
                assert result.error_message.startswith("FakeEngineFailure: ")
            else:
                assert result.assessment == engine.assess(_image(i))
    finally:
        window.close()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("transformers", "engine.model is required for engine.kind=transformers"),
        ("openai", "engine.base_url is required for engine.kind=openai"),
    ],
)
def test_guard_model_engines_without_a_model_are_config_errors(kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_engine(EngineSettings(kind=kind))


def test_transformers_with_a_missing_checkpoint_names_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"no checkpoint directory at {missing}"):
        build_engine(EngineSettings(kind="transformers", model=str(missing)))


def test_nudenet_without_the_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError) as caught:
        build_engine(EngineSettings(kind="nudenet"))
    assert str(caught.value) == NUDENET_MISSING
