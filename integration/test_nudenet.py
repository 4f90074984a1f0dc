"""The nudenet engine: the real 320n model on CPU, and its pure decoding and mapping parts."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from moderator.engine.base import EngineRequest
from moderator.engine.factory import build_engine
from moderator.engine.nudenet import (
    EXPLICIT,
    NUDITY,
    Detection,
    NudenetEngine,
    assess,
    decode,
    preprocess,
)
from moderator.events.verdict import NONE_APPLYING
from moderator.settings import EngineSettings, NudenetSettings

pytestmark = pytest.mark.nudenet

MISSING = [name for name in ("nudenet", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_model = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not importable: pip install 'moderator[nudenet]'",
)

BLOCK, EXPLICIT_AT = 0.6, 0.7


@pytest.fixture(scope="module")
def engine() -> NudenetEngine:
    return NudenetEngine(NudenetSettings(threads=2, block_threshold=BLOCK))


def _images() -> list[Image.Image]:
    np = pytest.importorskip("numpy")
    noise = np.random.default_rng(7).integers(0, 256, (240, 360, 3), dtype=np.uint8)
    return [
        Image.new("RGB", (320, 320), "white"),
        Image.new("RGB", (500, 200), "black"),
        Image.new("RGB", (64, 640), (200, 40, 40)),
        Image.fromarray(noise),
        Image.new("L", (100, 100), 128),
        Image.new("RGBA", (50, 70), (10, 200, 10, 100)),
    ]


@needs_model
def test_plain_and_noise_images_are_safe_in_one_batch(engine: NudenetEngine) -> None:
    images = _images()
    batch = [EngineRequest(f"r{i}", im, "", ()) for i, im in enumerate(images)]
    results = engine.classify(batch)
    assert len(results) == len(batch)
    for result in results:
        assert result.error_code is None and result.assessment is not None
        assert result.assessment.rating == "Safe"
        assert result.assessment.category == NONE_APPLYING
        assert result.assessment.score is None
        assert "NudeNet" in result.assessment.rationale
        assert result.raw_output is not None
    assert engine.classify([]) == []


@needs_model
def test_info_and_threads(engine: NudenetEngine) -> None:
    assert engine.info.engine == "nudenet"
    assert engine.info.name == "nudenet-320n"
    assert engine.info.revision == importlib.metadata.version("nudenet")
    assert engine.info.categories == ("O3", "O4")
    assert engine.info.smoke_test is False
    assert engine.input_size == 320
    assert engine.session_options.intra_op_num_threads == 2
    assert engine.session_options.inter_op_num_threads == 1
    assert "FEMALE_BREAST_EXPOSED" in engine.labels and len(engine.labels) == 18


@needs_model
def test_factory_builds_it_with_the_configured_threads() -> None:
    built = build_engine(EngineSettings(kind="nudenet", nudenet=NudenetSettings(threads=3)))
    assert isinstance(built, NudenetEngine)
    assert built.session_options.intra_op_num_threads == 3
    built.close()


def _d(label: str, score: float) -> Detection:
    return Detection(label, score, (0.0, 0.0, 10.0, 10.0))


@pytest.mark.parametrize(
    ("detections", "category"),
    [
        ([], NONE_APPLYING),
        ([_d("FEMALE_BREAST_EXPOSED", BLOCK - 0.001)], NONE_APPLYING),
        ([_d("FEMALE_BREAST_EXPOSED", BLOCK)], NUDITY),
        ([_d("BUTTOCKS_EXPOSED", 0.99)], NUDITY),  # never more than nudity
        ([_d("FEMALE_GENITALIA_EXPOSED", BLOCK - 0.001)], NONE_APPLYING),
        ([_d("FEMALE_GENITALIA_EXPOSED", EXPLICIT_AT - 0.001)], NUDITY),
        ([_d("FEMALE_GENITALIA_EXPOSED", EXPLICIT_AT)], EXPLICIT),
        ([_d("MALE_GENITALIA_EXPOSED", EXPLICIT_AT - 0.001)], NUDITY),
        ([_d("MALE_GENITALIA_EXPOSED", EXPLICIT_AT)], EXPLICIT),
        ([_d("ANUS_EXPOSED", BLOCK)], NUDITY),
        ([_d("ANUS_EXPOSED", EXPLICIT_AT)], EXPLICIT),
        ([_d("MALE_BREAST_EXPOSED", 0.99), _d("BELLY_EXPOSED", 0.99)], NONE_APPLYING),
        ([_d("FEMALE_BREAST_COVERED", 0.99), _d("FACE_FEMALE", 0.99)], NONE_APPLYING),
        ([_d("FEMALE_GENITALIA_COVERED", 0.99), _d("ANUS_COVERED", 0.99)], NONE_APPLYING),
        ([_d("FEMALE_BREAST_EXPOSED", 0.95), _d("ANUS_EXPOSED", 0.71)], EXPLICIT),  # worst wins
    ],
)
def test_mapping_thresholds(detections: list[Detection], category: str) -> None:
    a = assess(detections, block_threshold=BLOCK, explicit_threshold=EXPLICIT_AT)
    assert a.category == category
    assert a.rating == ("Safe" if category == NONE_APPLYING else "Unsafe")
    assert a.score is None
    for d in detections:
        assert d.label in a.rationale
    if not detections:
        assert "Top detections: none" in a.rationale


def test_rationale_names_the_top_detections_only() -> None:
    many = [_d(f"LABEL_{i}", i / 10) for i in range(10)]
    a = assess(many, block_threshold=BLOCK, explicit_threshold=EXPLICIT_AT)
    assert "LABEL_9 0.900" in a.rationale and "LABEL_5 0.500" in a.rationale
    assert "LABEL_4" not in a.rationale


def test_preprocess_letterboxes() -> None:
    pytest.importorskip("numpy")
    tensor, scale = preprocess(Image.new("RGB", (640, 320), (255, 0, 0)))
    assert tensor.shape == (3, 320, 320) and str(tensor.dtype) == "float32"
    assert scale == 2.0
    assert tensor[0, :160].min() == 1.0 and tensor[1:, :160].max() == 0.0  # red, channel first
    assert tensor[:, 160:].max() == 0.0  # black padding below


def test_decode_scales_clips_and_suppresses() -> None:
    np = pytest.importorskip("numpy")
    labels = ("A", "B", "C")
    anchors = [  # centre x, centre y, width, height (model pixels), scores for A, B, C
        (100, 100, 40, 40, 0.9, 0.0, 0.0),
        (102, 101, 40, 40, 0.8, 0.0, 0.0),  # overlaps the first, same class: suppressed
        (101, 100, 40, 40, 0.0, 0.7, 0.0),  # same place, other class: kept
        (310, 10, 40, 40, 0.0, 0.0, 0.5),  # partly outside: clipped
        (50, 50, 10, 10, 0.1, 0.0, 0.1),  # below the floor
    ]
    output = np.array(anchors, dtype=np.float32).T
    found = decode(output, labels, scale=2.0, image_size=(630, 600), floor=0.2)
    assert [(d.label, round(d.score, 2)) for d in found] == [("A", 0.9), ("B", 0.7), ("C", 0.5)]
    assert found[0].box == (160.0, 160.0, 240.0, 240.0)
    assert found[2].box == (580.0, 0.0, 630.0, 60.0)
    assert decode(output, labels, scale=1.0, image_size=(320, 320), floor=0.95) == []


@needs_model
def test_onnxruntime_keeps_no_device_id_and_sends_no_telemetry(tmp_path: Path) -> None:
    """onnxruntime's Linux wheels keep a device id under $HOME/.cache/Microsoft and send usage
    events unless told not to; the engine tells it, whatever the environment says."""
    script = (
        "from moderator.engine.nudenet import NudenetEngine\n"
        "from moderator.settings import NudenetSettings\n"
        "NudenetEngine(NudenetSettings(threads=1))\n"
        "import os, time; time.sleep(1); print(os.environ['ORT_DISABLE_TELEMETRY'])\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "ORT_DISABLE_TELEMETRY": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert not (tmp_path / ".cache").exists(), sorted(str(p) for p in tmp_path.rglob("*"))
