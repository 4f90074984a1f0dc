"""A deterministic stand-in engine for plumbing, load and crash tests (no model, no GPU).

Everything it says about an image is drawn from a hash of the image's pixels and the seed, so the
same image always gets the same verdict, also after a crash and a re-decision.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import ClassVar

from PIL.Image import Image

from moderator.engine.base import Capabilities, EngineRequest, EngineResult
from moderator.errors import ModeratorError
from moderator.events.verdict import CATEGORIES, NONE_APPLYING, Assessment, ModelInfo, category_code
from moderator.settings import FakeEngineSettings

UNSAFE_CATEGORIES = CATEGORIES[:-1]
RATIONALE = (
    "Fake engine: a deterministic stand-in verdict drawn from a hash of the image, "
    "not a model's judgement."
)
_UNIT = float(1 << 64)


class FakeEngineFailure(ModeratorError):
    """Raised by FakeEngine.classify when a batch holds an image drawn to fail."""


class FakeEngine:
    """Implements the Engine protocol with hash-derived verdicts; `smoke_test` is always true."""

    # Draws any of O1..O9, whatever the prompt says.
    capabilities: ClassVar[Capabilities] = Capabilities(
        categories=tuple(category_code(c) for c in UNSAFE_CATEGORIES), reads_policy=False
    )

    def __init__(self, settings: FakeEngineSettings) -> None:
        self._settings = settings
        self._info = ModelInfo(
            engine="fake",
            name="fake",
            categories=self.capabilities.categories,
            smoke_test=True,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return 448

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        """Sleep `latency_ms` once for the batch; raise if any image is one drawn to fail."""
        if self._settings.latency_ms > 0:
            time.sleep(self._settings.latency_ms / 1000.0)
        draws = [self._draw(request.image) for request in batch]
        for request, (fail, _, _, _) in zip(batch, draws, strict=True):
            if fail < self._settings.failure_rate:
                raise FakeEngineFailure(f"fake engine failure on request {request.request_id}")
        return [self._result(unsafe, pick, score) for _, unsafe, pick, score in draws]

    def assess(self, image: Image) -> Assessment:
        """The assessment this engine gives `image` (unless the image is drawn to fail)."""
        _, unsafe, pick, score = self._draw(image)
        return self._assessment(unsafe, pick, score)

    def fails(self, image: Image) -> bool:
        """Whether any batch holding `image` makes classify raise."""
        return self._draw(image)[0] < self._settings.failure_rate

    def close(self) -> None:
        pass

    def _draw(self, image: Image) -> tuple[float, float, int, float]:
        """Four independent draws from the pixels and the seed: fail, unsafe, category, score."""
        header = f"{self._settings.seed}:{image.mode}:{image.width}x{image.height}:".encode()
        digest = hashlib.sha256(header + image.tobytes()).digest()
        words = [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8)]
        return words[0] / _UNIT, words[1] / _UNIT, words[2], words[3] / _UNIT

    def _assessment(self, unsafe: float, pick: int, score: float) -> Assessment:
        if unsafe < self._settings.unsafe_rate:
            category = UNSAFE_CATEGORIES[pick % len(UNSAFE_CATEGORIES)]
            return Assessment(
                rating="Unsafe",
                category=category,
                rationale=RATIONALE,
                score=round(0.55 + 0.45 * score, 4),
            )
        return Assessment(
            rating="Safe",
            category=NONE_APPLYING,
            rationale=RATIONALE,
            score=round(0.45 * score, 4),
        )

    def _result(self, unsafe: float, pick: int, score: float) -> EngineResult:
        assessment = self._assessment(unsafe, pick, score)
        raw = json.dumps(
            {
                "rating": assessment.rating,
                "category": assessment.category,
                "rationale": assessment.rationale,
            }
        )
        return EngineResult(
            assessment=assessment, raw_output=raw, generation={"seed": self._settings.seed}
        )
