"""The `transformers` engine on a CUDA device: tiny checkpoints in bfloat16, end to end.

The CPU suite (tests/test_hf_engine.py) runs the same engine in float32 on a CPU; here the
device and dtype are the production ones: `engine.transformers.device: auto` picks the GPU and
`dtype: auto` bfloat16. Each architecture judges a batch of four images of different sizes with
schema-constrained decoding and the score; every result must parse, with a score in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from moderator.engine.base import EngineRequest
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings
from tests.gpu.conftest import need_modules

pytestmark = [pytest.mark.gpu, pytest.mark.transformers]

PROMPT = "Assess the image against the policy.\nO1: Hate, Humiliation, Harassment: should not ..."


@pytest.fixture(scope="module", params=["llava-onevision", "qwen2-vl", "qwen2.5-vl"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    need_modules("transformers", "xgrammar")
    from moderator.dev.tiny.checkpoint import make_tiny
    from moderator.engine.factory import build_engine

    arch: str = request.param
    model = make_tiny(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
    settings = EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(model),
            "transformers": {"device": "auto", "dtype": "auto"},
            "generation": {"max_new_tokens": 80, "rationale_max_chars": 48},
        }
    )
    built = build_engine(settings)
    yield built
    built.close()


def test_a_constrained_batch_with_scores_on_the_gpu(engine: Any) -> None:
    sizes = [(64, 48), (40, 90), (120, 120), (33, 17)]
    batch = [
        EngineRequest(
            f"r{i}", Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)), PROMPT, CATEGORIES
        )
        for i, size in enumerate(sizes)
    ]
    results = engine.classify(batch)
    assert len(results) == 4
    for result in results:
        assert result.error_code is None, (result.error_code, result.error_message)
        assert result.assessment is not None
        assert result.assessment.category in CATEGORIES
        assert result.assessment.score is not None
        assert 0.0 <= result.assessment.score <= 1.0
        assert result.generation["device"].startswith("cuda")
        assert result.generation["dtype"] == "bfloat16"
        assert result.generation["batch_size"] == 4
