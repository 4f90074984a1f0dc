"""The engine port: a batch of (image, prompt) requests in, one result per request out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL.Image import Image

from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment, ModelInfo


@dataclass(frozen=True)
class EngineRequest:
    """One image to judge against one compiled policy prompt."""

    request_id: str
    image: Image
    prompt: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class EngineResult:
    """Per-item result: an assessment, or an error code (never both)."""

    assessment: Assessment | None = None
    error_code: ErrorCode | None = None
    error_message: str = ""
    raw_output: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.assessment is None) == (self.error_code is None):
            raise ValueError("EngineResult needs exactly one of assessment and error_code")


class Engine(Protocol):
    """A loaded model. `classify` may raise: the window then splits the batch to isolate the item.

    Implementations are called from the window's worker threads, at most `concurrency` batches
    at a time.
    """

    @property
    def info(self) -> ModelInfo: ...

    @property
    def input_size(self) -> int:
        """Longest image side the model looks at; decoding downsizes to about this."""
        ...

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]: ...

    def close(self) -> None: ...
