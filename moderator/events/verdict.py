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
    source: Literal["model", "cache"] = "model"
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
