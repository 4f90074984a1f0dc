"""Verdict and audit-record assembly, and the strictest-frame rule (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from moderator.errors import ErrorCode
from moderator.events.upload import UploadEvent
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    Decision,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Source,
    Timings,
    Verdict,
    VerdictError,
    VerdictObject,
)

SEVERITY: dict[Decision, int] = {"allow": 0, "review": 1, "block": 2}
MAX_RAW_OUTPUT_CHARS = 16 * 1024
MAX_RATIONALE_CHARS = 8 * 1024
"""What the records keep of a model's output and rationale. A guard model's answer is a few
hundred characters; a model or server that writes on must not make a verdict or audit record too
large for Kafka (moderator.emit.records.MAX_RECORD_BYTES). The decision does not depend on the
rest: rating and category come first."""


@dataclass(frozen=True)
class FrameOutcome:
    """What one frame of an image came to: an assessment or an error, and its decision."""

    decision: Decision
    assessment: Assessment | None = None
    error: VerdictError | None = None
    raw_output: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1


def strictest(frames: Sequence[FrameOutcome]) -> FrameOutcome:
    """The frame whose decision is strictest; an assessment beats an error of equal severity,
    then the higher score wins. Used for animations (every sampled frame is judged)."""

    def rank(f: FrameOutcome) -> tuple[int, int, float]:
        score = f.assessment.score if f.assessment and f.assessment.score is not None else -1.0
        return (SEVERITY[f.decision], f.assessment is not None, score)

    return max(frames, key=rank)


@dataclass(frozen=True)
class Provenance:
    """Where the event came from and who judged it: the audit record's extra fields."""

    coords: InputCoords
    instance_id: str
    package_version: str
    policy_hash: str
    prompt_sha256: str | None
    policy_document: dict[str, Any] | None = None


@dataclass(frozen=True)
class ObjectFacts:
    etag: str | None = None
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None


def assemble(
    event: UploadEvent,
    outcome: FrameOutcome,
    *,
    policy: PolicyRef,
    model: ModelInfo | None,
    facts: ObjectFacts,
    source: Source,
    timings: Timings,
    decided_at: datetime,
    trace_id: str,
    provenance: Provenance,
) -> tuple[Verdict, AuditRecord]:
    obj = event.object
    assessment = outcome.assessment if outcome.error is None else None
    if assessment is not None and len(assessment.rationale) > MAX_RATIONALE_CHARS:
        assessment = assessment.model_copy(
            update={"rationale": cut(assessment.rationale, MAX_RATIONALE_CHARS)}
        )
    verdict = Verdict(
        event_id=event.event_id,
        tenant_id=event.tenant_id,
        object=VerdictObject(
            bucket=obj.bucket,
            key=obj.key,
            version_id=obj.version_id,
            etag=facts.etag or obj.etag,
            sha256=facts.sha256,
            format=facts.format,
            width=facts.width,
            height=facts.height,
        ),
        decision=outcome.decision,
        assessment=assessment,
        policy=policy,
        model=model,
        # An error outcome has no usable assessment: its decision is the policy's on_error rule.
        source="error" if outcome.error is not None else source,
        error=outcome.error,
        timings_ms=timings,
        decided_at=decided_at,
        trace_id=trace_id,
    )
    audit = AuditRecord(
        verdict=verdict,
        uploaded_at=event.uploaded_at,
        context=event.context.model_dump(exclude_none=True),
        input=provenance.coords,
        instance_id=provenance.instance_id,
        package_version=provenance.package_version,
        policy_hash=provenance.policy_hash,
        prompt_sha256=provenance.prompt_sha256,
        policy_document=provenance.policy_document,
        generation=outcome.generation,
        raw_output=(
            cut(outcome.raw_output, MAX_RAW_OUTPUT_CHARS)
            if outcome.raw_output is not None and len(outcome.raw_output) > MAX_RAW_OUTPUT_CHARS
            else outcome.raw_output
        ),
        attempts=outcome.attempts,
    )
    return verdict, audit


def cut(text: str, limit: int) -> str:
    """`text`'s first `limit` characters and a marker saying how long it was."""
    return f"{text[:limit]} [cut: {len(text)} characters]"


def error_outcome(code: ErrorCode, message: str, decision: Decision) -> FrameOutcome:
    return FrameOutcome(decision=decision, error=VerdictError(code=code, message=message[:500]))
