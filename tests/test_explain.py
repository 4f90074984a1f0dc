"""The explain core: audit records built by the real pipeline assembly under the bundled demo
policies, explained step by step (threshold, rating + action, on_error, cache, redacted record,
missing policy document), the `because` cell, the JSON document, and the traced decision held
to `moderator.policy.decide` for generated rules and assessments."""

from __future__ import annotations

import dataclasses
import types
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.fields import record_fields
from moderator.audit.read.api_models import VerdictExplanation
from moderator.errors import ErrorCode
from moderator.events.upload import ObjectRef, UploadContext, UploadEvent
from moderator.events.verdict import (
    CATEGORIES,
    Assessment,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Timings,
)
from moderator.explain.build import (
    CacheOrigin,
    explain_record,
    explain_verdict,
    read_table,
    trace,
)
from moderator.explain.lookup import cache_origin
from moderator.explain.render import because, explanation_json, rule_text, steps, text_lines
from moderator.pipeline.assemble import (
    FrameOutcome,
    ObjectFacts,
    Provenance,
    assemble,
    error_outcome,
)
from moderator.policy.check import check
from moderator.policy.compiled import TenantPolicy
from moderator.policy.decide import decide, decision_table_json
from moderator.policy.model import ResolvedCategory, ResolvedNoneApplying, ResolvedPolicy
from moderator.settings import TenancySettings
from tests.fuzz import fuzz_settings
from tests.import_contract import core_violations, read_graph

ROOT = Path(__file__).resolve().parents[1]
DECIDED = datetime(2026, 11, 29, 2, 5, tzinfo=UTC)
FAKE = ModelInfo(engine="fake", name="fake", smoke_test=True)
GUARD = ModelInfo(engine="lmdeploy", name="AIML-TUDA/QwenGuard-v1.2-3B")


@cache
def demo_policies() -> dict[tuple[str, str], TenantPolicy]:
    with as_file(files("moderator") / "data" / "demo-policies") as directory:
        return dict(check(Path(directory), TenancySettings()).policies)


def demo(tenant: str, surface: str = "default") -> TenantPolicy:
    return demo_policies()[(tenant, surface)]


def audit_record(
    event_id: str,
    policy: TenantPolicy,
    *,
    assessment: Assessment | None = None,
    error: ErrorCode | None = None,
    decision: str | None = None,
    source: Literal["model", "cache"] = "model",
    model: ModelInfo | None = FAKE,
    sha256: str = "ab" * 32,
    decided_at: datetime = DECIDED,
    bucket: str = "uploads",
    key: str | None = None,
    surface: str = "post",
    message: str = "s3://uploads/x: not found",
    image_format: str = "PNG",
) -> dict[str, Any]:
    """An AuditRecord v1 as the pipeline writes it (`assemble`), as JSON; `message` is the
    error's, `key` defaults to `{tenant}/demo/{event_id}.png`."""
    event = UploadEvent(
        event_id=event_id,
        tenant_id=policy.tenant_id,
        # Constructed, not validated: tests of display escaping store a bucket holding control
        # characters, as records written before events were refused for one may.
        object=ObjectRef.model_construct(
            bucket=bucket, key=key or f"{policy.tenant_id}/demo/{event_id}.png"
        ),
        uploaded_at=DECIDED - timedelta(minutes=5),
        context=UploadContext(surface=surface),
    )
    if error is not None:
        outcome = error_outcome(error, message, policy.on_error(error))
    else:
        assert assessment is not None
        outcome = FrameOutcome(decision=policy.decide(assessment), assessment=assessment)
    if decision is not None:
        outcome = dataclasses.replace(outcome, decision=decision)  # type: ignore[arg-type]
    _, audit = assemble(
        event,
        outcome,
        policy=PolicyRef(tenant_id=policy.tenant_id, surface=surface, version=policy.version),
        model=model,
        facts=ObjectFacts(sha256=sha256, format=image_format, width=640, height=480),
        source=source,
        timings=Timings(),
        decided_at=decided_at,
        trace_id="0" * 32,
        provenance=Provenance(
            coords=InputCoords(topic="uploads", partition=0, offset=7),
            instance_id="pod-1",
            package_version="0.1.0",
            policy_hash=policy.full_hash,
            prompt_sha256=policy.prompt_sha256,
            policy_document=policy.document(),
        ),
    )
    return audit.model_dump(mode="json", by_alias=True)


def explain(record: dict[str, Any], document: Any = "record", **kwargs: Any) -> Any:
    doc = record["policy_document"] if document == "record" else document
    return explain_record(record_fields(record), record, doc, **kwargs)


def unsafe(category: str, score: float | None = None, rating: str = "Unsafe") -> Assessment:
    full = next(c for c in CATEGORIES if c.startswith(category))
    return Assessment(rating=rating, category=full, rationale="A pistol on a table.", score=score)


# -- the decision path ---------------------------------------------------------------------


def test_a_threshold_crossed_names_score_threshold_category_and_decision() -> None:
    record = audit_record("e-1", demo("kidsplace"), assessment=unsafe("O6", 0.252))
    e = explain(record)
    assert e.decision == "review" and e.matches_policy is True
    assert e.rule.kind == "threshold" and e.rule.threshold == "review_at" and e.rule.crossed
    assert rule_text(e) == "score 0.252 >= review_at 0.2 for O6 -> review"
    assert because(e) == "score 0.252 >= review 0.2"
    named = dict(steps(e))
    assert named["policy"] == (
        f"{demo('kidsplace').version}: row O6 (mode sensitive): block_at 0.5, review_at 0.2; "
        "Unsafe -> block"
    )
    assert named["engine"] == (
        "fake:fake (smoke test: its decisions mean nothing): Unsafe, "
        "O6: Weapons or Substance Abuse, score 0.252"
    )
    assert named["rationale"] == '"A pistol on a table."'
    assert named["input"] == (
        "tenant kidsplace, surface post, s3://uploads/kidsplace/demo/e-1.png, "
        "uploaded 2026-11-29T02:00:00Z"
    )
    assert named["image"] == f"sha256 {'ab' * 32}, PNG 640x480"
    assert named["decision"] == "review"
    assert "missing" not in named


def test_a_safe_rating_above_review_at_still_goes_to_review() -> None:
    """The demo's "Safe NA -> review" that looked like a bug: the NA row's thresholds decide."""
    e = explain(audit_record("e-2", demo("kidsplace"), assessment=unsafe("NA", 0.4472, "Safe")))
    assert (e.decision, rule_text(e)) == (
        "review",
        "score 0.4472 >= review_at 0.2 for NA -> review",
    )


def test_a_score_below_every_threshold_allows() -> None:
    e = explain(audit_record("e-3", demo("kidsplace"), assessment=unsafe("O1", 0.1676)))
    assert rule_text(e) == "score 0.1676 < review_at 0.2 for O1 -> allow"
    assert e.rule.crossed is False and e.decision == "allow"
    assert because(e) == "score 0.1676 < review 0.2"


def test_the_because_score_is_shown_as_recorded() -> None:
    e = explain(audit_record("e-4", demo("kidsplace"), assessment=unsafe("O1", 0.19996)))
    assert because(e) == "score 0.19996 < review 0.2"  # not "0.2 < review 0.2"


def test_rating_and_action_decide_without_thresholds() -> None:
    e = explain(audit_record("e-5", demo("acme"), assessment=unsafe("O5", 0.7408)))
    assert e.decision == "block" and e.rule.kind == "rating"
    assert rule_text(e) == "rating Unsafe for O5: row action block -> block (no score thresholds)"
    assert because(e) == "Unsafe O5 -> block"
    safe = explain(audit_record("e-6", demo("museum"), assessment=unsafe("NA", 0.16, "Safe")))
    assert rule_text(safe) == "rating Safe for NA -> allow (no score thresholds)"
    assert because(safe) == "Safe -> allow"


def test_without_a_score_the_rating_decides_even_where_thresholds_exist() -> None:
    e = explain(audit_record("e-7", demo("kidsplace"), assessment=unsafe("O2", None)))
    assert rule_text(e) == (
        "rating Unsafe for O2: row action block -> block (no score, so the rating decides)"
    )
    assert dict(steps(e))["engine"].endswith("O2: Violence, Harm, or Cruelty, no score")


def test_an_allowed_category_caps_a_block_at_review() -> None:
    record = audit_record("e-8", demo("museum"), assessment=unsafe("O4", 0.9))
    table = record["policy_document"]["decision_table"]
    table["categories"]["O4"] = {
        "mode": "allowed",
        "action": "block",
        "block_at": 0.5,
        "review_at": None,
    }
    record["verdict"]["decision"] = "review"
    e = explain(record)
    assert e.rule.capped and e.decision == "review" and e.matches_policy is True
    assert rule_text(e) == (
        "score 0.9 >= block_at 0.5 for O4 -> block; O4 is allowed (never blocks): review"
    )
    assert because(e) == "score 0.9 >= block 0.5, allowed: review"


def test_an_error_verdict_names_its_code_and_the_on_error_rule() -> None:
    record = audit_record(
        "e-9", demo("museum"), error=ErrorCode.OBJECT_NOT_FOUND, model=None, sha256="cd" * 32
    )
    e = explain(record)
    assert e.assessment is None and e.error is not None and e.error.security is False
    assert e.decision == "allow" and e.policy.on_error == "allow" and e.matches_policy is True
    named = dict(steps(e))
    assert named["engine"] == "not run (failed before it: object_not_found)"
    assert named["error"] == "object_not_found: s3://uploads/x: not found"
    assert named["policy"].endswith("on_error for object_not_found is allow")
    assert rule_text(e) == "on_error for object_not_found -> allow"
    assert because(e) == "error: object_not_found -> on_error allow"


def test_an_unknown_tenant_s_policy_line_says_it_is_the_default_policy() -> None:
    record = audit_record("e-9c", demo("default"), error=ErrorCode.UNKNOWN_TENANT, model=None)
    record["verdict"]["tenant_id"] = "acme"
    e = explain(record)
    assert dict(steps(e))["policy"] == (
        f"{e.policy.version} (the default policy: tenant acme has none): "
        f"on_error for unknown_tenant is {e.policy.on_error}"
    )
    other = explain(audit_record("e-9d", demo("museum"), error=ErrorCode.CORRUPT_IMAGE))
    assert "default policy" not in dict(steps(other))["policy"]


def test_an_error_code_the_table_does_not_list_names_no_rule() -> None:
    record = audit_record("e-9b", demo("museum"), error=ErrorCode.CORRUPT_IMAGE, model=None)
    del record["policy_document"]["decision_table"]["on_error"]["corrupt_image"]
    e = explain(record)
    assert e.rule.kind == "on_error" and e.matches_policy is None
    assert rule_text(e) == (
        "not known: the decision table has no on_error entry for corrupt_image; "
        "the verdict records review"
    )


def test_a_security_error_says_it_is_never_allowed() -> None:
    record = audit_record("e-10", demo("acme"), error=ErrorCode.DECOMPRESSION_BOMB, model=None)
    e = explain(record)
    assert e.error is not None and e.error.security
    assert dict(steps(e))["error"].endswith("(a security error: never allowed)")
    assert rule_text(e) == "on_error for decompression_bomb -> review"


def test_an_engine_failure_names_the_model_that_gave_no_answer() -> None:
    record = audit_record("e-11", demo("acme"), error=ErrorCode.ENGINE_TIMEOUT, model=GUARD)
    assert dict(steps(explain(record)))["engine"] == (
        "lmdeploy:AIML-TUDA/QwenGuard-v1.2-3B: no usable answer"
    )


def test_a_cache_hit_names_the_original_judgement() -> None:
    record = audit_record("e-12", demo("acme"), assessment=unsafe("O5", 0.74), source="cache")
    origin = CacheOrigin("e-0", DECIDED - timedelta(hours=1))
    e = explain(record, cache_origin=origin, origin_looked_up=True)
    assert e.cache is not None and e.cache.original_event_id == "e-0"
    assert dict(steps(e))["cache"] == (
        "assessment reused from the verdict cache (same image bytes, model input and model); "
        "earliest model judgement of this image in the audit store: "
        "event e-0 at 2026-11-29T01:05:00Z "
        "(the cached answer may come from a later one)"
    )
    assert rule_text(e) == "rating Unsafe for O5: row action block -> block (no score thresholds)"
    assert because(e) == "cache; Unsafe O5 -> block"
    lost = explain(record, origin_looked_up=True)
    assert dict(steps(lost))["cache"].endswith(
        "no earlier model judgement of it for tenant acme is in the audit store (the cache "
        "is shared by all tenants; other tenants' records are not searched)"
    )
    assert explain(audit_record("e-13", demo("acme"), assessment=unsafe("O5"))).cache is None


def test_a_redacted_record_is_explained_from_the_kept_columns() -> None:
    record = audit_record("e-14", demo("kidsplace"), assessment=unsafe("O6", 0.252))
    columns = dataclasses.replace(record_fields(record), object_key=None)
    redacted = DECIDED + timedelta(days=30)
    e = explain_record(columns, None, record["policy_document"], redacted_at=redacted)
    assert rule_text(e) == "score 0.252 >= review_at 0.2 for O6 -> review"  # columns suffice
    named = dict(steps(e))
    assert named["input"] == "tenant kidsplace, surface post, object key redacted"
    assert "rationale" not in named and e.assessment is not None
    assert e.assessment.rationale is None
    assert e.missing == (
        "audit record: redacted by retention at 2026-12-29T02:05:00Z; gone with it: object key, "
        "rationale, error message, image format and size, upload time",
    )
    assert text_lines(e)[-1].startswith("missing    audit record: redacted by retention")


def test_a_missing_policy_document_says_so_and_names_no_rule() -> None:
    record = audit_record("e-15", demo("kidsplace"), assessment=unsafe("O6", 0.252))
    e = explain(record, None)
    assert e.rule.kind == "unknown" and e.matches_policy is None
    assert rule_text(e) == "not known: no decision table to read; the verdict records review"
    assert dict(steps(e))["policy"] == f"{demo('kidsplace').version}: document not available"
    assert e.missing[0].startswith(f"policy document: version {demo('kidsplace').version} is not")
    assert because(e) == "Unsafe O6 (no policy table)"
    unreadable = explain(record, {"decision_table": [{"category": "O4"}]})
    assert unreadable.missing == (
        "decision table: the policy document holds none this version can read",
    )


def test_a_decision_the_table_does_not_give_is_flagged() -> None:
    record = audit_record("e-16", demo("acme"), assessment=unsafe("O5", 0.7), decision="allow")
    e = explain(record)
    assert e.matches_policy is False
    assert dict(steps(e))["mismatch"] == "the decision table gives block; the verdict records allow"


def test_a_verdict_alone_is_explained_with_a_document_by_version() -> None:
    record = audit_record("e-17", demo("kidsplace"), assessment=unsafe("O6", 0.6))
    e = explain_verdict(record["verdict"], record["policy_document"])
    assert because(e) == "score 0.6 >= block 0.5" and e.missing == ()
    with pytest.raises(ValueError, match="not a verdict"):
        explain_verdict({"event_id": "x"}, None)


# -- the JSON document ---------------------------------------------------------------------


def test_json_document_matches_its_schema_and_the_text_steps() -> None:
    record = audit_record("e-18", demo("kidsplace"), assessment=unsafe("O6", 0.252))
    e = explain(record)
    doc = explanation_json(e)
    VerdictExplanation.model_validate(doc)  # every key documented, no other key
    assert doc["schema"] == "moderator.explanation/v1"
    assert doc["rule"] == {
        "kind": "threshold",
        "decision": "review",
        "threshold": "review_at",
        "threshold_value": 0.2,
        "crossed": True,
        "capped": False,
        "text": "score 0.252 >= review_at 0.2 for O6 -> review",
    }
    assert doc["policy"]["row"] == {
        "category": "O6",
        "mode": "sensitive",
        "action": "block",
        "block_at": 0.5,
        "review_at": 0.2,
    }
    assert doc["assessment"]["score"] == 0.252 and doc["input"]["width"] == 640
    assert [(s["step"], s["text"]) for s in doc["steps"]] == steps(e)
    error = explanation_json(
        explain(audit_record("e-19", demo("acme"), error=ErrorCode.CORRUPT_IMAGE))
    )
    VerdictExplanation.model_validate(error)
    assert error["error"]["code"] == "corrupt_image" and error["rule"]["kind"] == "on_error"


# -- the traced rule is the rule the pipeline applies ----------------------------------------

thresholds = st.none() | st.floats(0.0, 1.0)
actions = st.sampled_from(("allow", "review", "block"))


@fuzz_settings(300)
@given(
    mode=st.sampled_from(("default", "allowed", "sensitive")),
    action=actions,
    block_at=thresholds,
    review_at=thresholds,
    na=st.tuples(actions, thresholds, thresholds),
    rating=st.sampled_from(("Safe", "Unsafe")),
    category=st.sampled_from((*CATEGORIES, "X1: not in the taxonomy")),
    score=st.none() | st.floats(0.0, 1.0),
)
def test_the_traced_decision_is_decide(
    mode: Any,
    action: Any,
    block_at: float | None,
    review_at: float | None,
    na: Any,
    rating: Any,
    category: str,
    score: float | None,
) -> None:
    resolved = _resolved(mode, action, block_at, review_at, na)
    table = read_table({"decision_table": decision_table_json(resolved)})
    assert table is not None
    assessment = Assessment(rating=rating, category=category, score=score)
    row = table.row_for(category)
    assert trace(row, rating, score).decision == decide(resolved, assessment)


def _resolved(
    mode: Any, action: Any, block_at: float | None, review_at: float | None, na: Any
) -> ResolvedPolicy:
    categories = tuple(
        ResolvedCategory(
            code=c.split(":")[0],
            name=c,
            mode=mode,
            action=action,
            block_at=block_at,
            review_at=review_at,
            should_not=(),
            can=(),
            allowed_text="",
            sensitive_text="",
        )
        for c in CATEGORIES[:-1]
    )
    return ResolvedPolicy(
        tenant_id="t",
        surface="default",
        chain=("default",),
        categories=categories,
        none_applying=ResolvedNoneApplying(action=na[0], block_at=na[1], review_at=na[2]),
        on_error={"default": "review"},
        buckets=("uploads",),
        prefixes=(),
        dsa_categories={},
        review_restricts_visibility=False,
        description=None,
        owner=None,
    )


def test_the_explain_core_imports_no_io_library_nor_the_settings() -> None:
    assert core_violations(read_graph(ROOT, "moderator"), ["explain"]) == []


class _QueryRecorder:
    """Test double of the audit reader: answers no row and keeps the queries it was asked."""

    def __init__(self) -> None:
        self.queries: list[Any] = []

    def query(self, q: Any) -> Any:
        self.queries.append(q)
        return types.SimpleNamespace(rows=[], next_cursor=None)


def test_a_cache_hit_looks_for_its_original_in_its_own_tenant_under_any_policy_version() -> None:
    """The cache is keyed by the image, the model input and the model: the original judgement
    may be under an earlier policy version (a threshold edit), never in another tenant."""
    record = audit_record("e-16", demo("acme"), assessment=unsafe("O5", 0.74), source="cache")
    row = types.SimpleNamespace(**vars(record_fields(record)))
    row.tenant_id, row.decided_at = "acme", DECIDED
    reader = _QueryRecorder()
    assert cache_origin(reader, row, ("acme", "museum")) is None  # type: ignore[arg-type]
    (query,) = reader.queries
    assert query.tenant_ids == ("acme",) and query.policy_version is None
    assert query.sha256 == row.sha256 and query.until == DECIDED


def test_the_models_revision_is_shown_while_the_record_keeps_it() -> None:
    # Two merges under one name differ only by their revision: the explanation names it.
    merged = ModelInfo(engine="transformers", name="tiny-lora", revision="2a6314e62f66")
    e = explain(audit_record("e-rev", demo("acme"), assessment=unsafe("O5", 0.74), model=merged))
    assert explanation_json(e)["model"] == {
        "engine": "transformers",
        "name": "tiny-lora",
        "revision": "2a6314e62f66",
        "smoke_test": False,
    }
    assert any("transformers:tiny-lora (revision 2a6314e62f66)" in line for line in text_lines(e))
    e = explain(audit_record("e-none", demo("acme"), assessment=unsafe("O5", 0.74), model=GUARD))
    assert explanation_json(e)["model"]["revision"] is None
