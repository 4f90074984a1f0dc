"""Verdict v1 and AuditRecord v1 (docs/architecture.md, "Topics and schemas")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from moderator.errors import ErrorCode

Decision = Literal["allow", "review", "block"]
Rating = Literal["Safe", "Unsafe"]

CATEGORIES: tuple[str, ...] = (
    "O1: Hate, Humiliation, Harassment",
    "O2: Violence, Harm, or Cruelty",
    "O3: Sexual Content",
    "O4: Nudity Content",
    "O5: Criminal Planning",
    "O6: Weapons or Substance Abuse",
    "O7: Self-Harm",
    "O8: Animal Cruelty",
    "O9: Disasters or Emergencies",
    "NA: None applying",
)
NONE_APPLYING = CATEGORIES[-1]


def category_code(category: str) -> str:
    """`"O4: Nudity Content"` → `"O4"`."""
    return category.split(":", 1)[0]


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


_BY_CODE = {_folded(category_code(c)): category_code(c) for c in CATEGORIES}
_BY_NAME = {_folded(c.split(":", 1)[1]): category_code(c) for c in CATEGORIES}


def code_of(text: str) -> str | None:
    """The code a category names as people write it, in any case and spacing: a code (`O4`,
    `o4`, `NA`), a name (`nudity content`, `None applying`) or both (`o4: Nudity Content`).
    None when it names no category of the taxonomy, or a code and a name that disagree."""
    code, colon, name = _folded(text).partition(":")
    if colon:
        found = _BY_CODE.get(code.strip())
        return found if found is not None and _BY_NAME.get(name.strip()) == found else None
    return _BY_CODE.get(code) or _BY_NAME.get(code)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Assessment(_Frozen):
    rating: Rating
    category: str
    rationale: str = ""
    score: float | None = Field(default=None, ge=0.0, le=1.0)


class VerdictObject(_Frozen):
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None


class PolicyRef(_Frozen):
    tenant_id: str
    surface: str
    version: str


class ModelInfo(_Frozen):
    engine: str
    name: str
    revision: str | None = None
    categories: tuple[str, ...] = ()
    smoke_test: bool = False


class VerdictError(_Frozen):
    code: ErrorCode
    message: str


class Timings(_Frozen):
    fetch: float = 0.0
    queue: float = 0.0
    infer: float = 0.0
    total: float = 0.0


# Where a verdict's decision came from: `model`, the engine's assessment of this image; `cache`,
# an assessment made before for the same bytes, model input (the prompt, for engines that read
# the policy) and model; `error`, no usable
# assessment (processing or the engine failed), so the policy's `on_error` rule decided.
Source = Literal["model", "cache", "error"]
ReplayPath = Literal["engine", "cache", "assessment", "error"]


class ReplayInfo(_Frozen):
    """Set on verdicts of a replay run (`moderation.replay`); null on live verdicts."""

    run_id: str
    original_decision: Decision | None  # None: the original verdict was not found
    # How the replayed decision was reached: the engine judged the image again, the verdict cache
    # answered, the original assessment was re-decided under the new policy, or processing failed.
    path: ReplayPath


class Verdict(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["moderator.verdict/v1"] = Field(default="moderator.verdict/v1", alias="schema")
    event_id: str
    tenant_id: str
    object: VerdictObject
    decision: Decision
    assessment: Assessment | None
    policy: PolicyRef
    model: ModelInfo | None
    source: Source = "model"
    replay: ReplayInfo | None = None
    error: VerdictError | None = None
    timings_ms: Timings = Field(default_factory=Timings)
    decided_at: AwareDatetime
    trace_id: str

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class InputCoords(_Frozen):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class AuditRecord(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["moderator.audit/v1"] = Field(default="moderator.audit/v1", alias="schema")
    verdict: Verdict
    uploaded_at: AwareDatetime | None
    context: dict[str, Any]
    input: InputCoords
    instance_id: str
    package_version: str
    policy_hash: str
    prompt_sha256: str | None
    # What policy_hash covers (prompt, decision table, locations): the audit store keeps each
    # version once, so any verdict can be explained exactly as it was decided.
    policy_document: dict[str, Any] | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    raw_output: str | None = None
    attempts: int = 1

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
