"""The engine port: a batch of (image, prompt) requests in, one result per request out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL.Image import Image

from moderator.errors import ErrorCode
from moderator.events.verdict import CATEGORIES, Assessment, ModelInfo, category_code

ALL_CODES: tuple[str, ...] = tuple(category_code(c) for c in CATEGORIES[:-1])  # O1..O9


@dataclass(frozen=True)
class Capabilities:
    """What an engine can ever answer, known without loading it (docs/engines.md).

    Each engine class declares it as its `capabilities` class attribute and fills
    `model.categories` from it, so the two never disagree.
    """

    categories: tuple[str, ...]  # the codes (O1..O9) it can rate Unsafe; NA is always possible
    reads_policy: bool  # whether the tenant's policy prompt shapes its answers

    def __post_init__(self) -> None:
        unknown = [code for code in self.categories if code not in ALL_CODES]
        if unknown:
            raise ValueError(f"not category codes: {', '.join(unknown)}")


# The guard models (transformers, lmdeploy, openai): the full taxonomy, told by the policy.
GUARD_MODEL = Capabilities(categories=ALL_CODES, reads_policy=True)


def declared_capabilities(engine: object) -> Capabilities | None:
    """The engine's `capabilities` declaration; None for an engine that declares none."""
    declared = getattr(engine, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else None


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
    at a time. Each also declares a `capabilities` class attribute (`Capabilities`): it is read
    through `declared_capabilities`, so an engine without one still serves.
    """

    @property
    def info(self) -> ModelInfo: ...

    @property
    def input_size(self) -> int:
        """Longest image side the model looks at; decoding downsizes to about this."""
        ...

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]: ...

    def close(self) -> None: ...
