"""DSA statements of reasons: builder, PUIDs, no personal data, validator rules, batches."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.dsa.export import (
    EU_COUNTRIES,
    STATEMENT_CATEGORIES,
    DsaExportError,
    DsaOptions,
    TenantDsa,
    batches,
    puid_for,
    skip_reason,
    statement_for,
    validate_statement,
)
from moderator.errors import ConfigError, ErrorCode
from moderator.policy.document import CODES
from moderator.policy.registry import PolicyRegistry
from moderator.settings import TenancySettings
from tests.dsa_fixtures import (
    ERROR_MESSAGE,
    RATIONALE,
    RAW_OUTPUT,
    SECRETS,
    record,
)

ROOT = Path(__file__).resolve().parent.parent
SALT = "test-salt-0123456789abcdef"
OPTIONS = DsaOptions(puid_salt=SALT)
MAPPING = TenantDsa(
    categories={
        **dict.fromkeys(CODES, "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"),
        "O2": "STATEMENT_CATEGORY_VIOLENCE",
        "NA": "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
    },
    surfaces=frozenset({"default", "profile_photo"}),
)
RESTRICTING = TenantDsa(MAPPING.categories, review_restricts_visibility=True)


def build(rec: dict[str, Any], mapping: TenantDsa = MAPPING) -> dict[str, Any]:
    statement = statement_for(rec, mapping, OPTIONS)
    assert statement is not None
    assert validate_statement(statement) == []
    return statement


# -- builder -------------------------------------------------------------------------------------


def test_block_by_the_model() -> None:
    s = build(record())
    assert s["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_REMOVED"]
    assert s["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert s["incompatible_content_ground"] == OPTIONS.incompatible_content_ground
    assert "Nudity Content" in s["incompatible_content_explanation"]
    assert s["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert s["category"] == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert s["territorial_scope"] == list(EU_COUNTRIES)
    assert len(EU_COUNTRIES) == 27
    assert (s["content_date"], s["application_date"]) == ("2026-11-29", "2026-11-29")
    assert s["source_type"] == "SOURCE_VOLUNTARY"
    assert "source_identity" not in s
    assert s["automated_detection"] == "Yes"
    assert s["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    facts = s["decision_facts"]
    assert "automated image classification model" in facts
    assert '"Nudity Content" (O4)' in facts
    assert "6c1f8e8704d0b0c9" in facts
    assert "'profile_photo' upload surface" in facts
    assert "blocked automatically, without review by a person" in facts
    assert "content_language" not in s


def test_category_comes_from_the_tenant_mapping() -> None:
    assert build(record(category="O2: Violence, Harm, or Cruelty"))["category"] == (
        "STATEMENT_CATEGORY_VIOLENCE"
    )
    na = build(record(category="NA: None applying"))
    assert na["category"] == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert "without naming a specific category" in na["decision_facts"]


def test_unmapped_category_is_an_error() -> None:
    with pytest.raises(DsaExportError, match="no entry for O4"):
        statement_for(record(), TenantDsa({"O1": "STATEMENT_CATEGORY_VIOLENCE"}), OPTIONS)


def test_allow_and_visible_review_restrict_nothing() -> None:
    assert statement_for(record("allow", category="NA: None applying"), MAPPING, OPTIONS) is None
    assert skip_reason(record("allow"), MAPPING) == "allow"
    assert statement_for(record("review"), MAPPING, OPTIONS) is None
    assert skip_reason(record("review"), MAPPING) == "review_visible"


def test_review_that_hides_content_is_reported() -> None:
    s = build(record("review"), RESTRICTING)
    assert s["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_DISABLED"]
    assert s["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert "hidden automatically until a moderator reviews it" in s["decision_facts"]
    assert "hidden until a moderator has reviewed it" in s["incompatible_content_explanation"]


def test_cached_repeat() -> None:
    s = build(record(source="cache"))
    assert s["automated_detection"] == "Yes"
    facts = s["decision_facts"]
    assert "identical to an image the same automated image classification model had" in facts
    assert "that assessment was reused and decided under the platform's content policy" in facts
    assert "classification model against" not in facts
    # The cache is keyed by image, model input and model, not by policy version: the earlier
    # assessment may have been another tenant's, under another version.
    assert "same policy version" not in facts
    assert "The assessment placed the image under" in facts


def test_error_verdict_that_blocks() -> None:
    s = build(record(category=None, error=ErrorCode.UNSUPPORTED_FORMAT))
    assert s["category"] == OPTIONS.error_category == "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
    assert "could not be checked automatically" in s["decision_facts"]
    assert "not in a supported image format" in s["decision_facts"]
    assert s["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert s["automated_detection"] == "Yes"
    review = build(record("review", category=None, error=ErrorCode.ENGINE_TIMEOUT), RESTRICTING)
    assert review["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_DISABLED"]


@pytest.mark.parametrize(
    "code", [ErrorCode.OBJECT_NOT_FOUND, ErrorCode.TENANT_MISMATCH, ErrorCode.UNKNOWN_TENANT]
)
def test_error_without_tenant_content_is_skipped(code: ErrorCode) -> None:
    rec = record(category=None, error=code)
    assert skip_reason(rec, MAPPING) == "no_content"
    assert statement_for(rec, MAPPING, OPTIONS) is None


def test_dates() -> None:
    late = datetime.fromisoformat("2026-11-28T23:30:00-02:00")  # 01:30 UTC on the 29th
    assert build(record(uploaded_at=late))["content_date"] == "2026-11-29"
    assert build(record(uploaded_at=datetime(2025, 1, 2, tzinfo=UTC)))["content_date"] == (
        "2025-01-02"
    )
    assert build(record(uploaded_at=None))["content_date"] == "2026-11-29"  # decided_at


def test_only_declared_surfaces_are_named() -> None:
    s = build(record(surface="u-private-4711"))
    assert "u-private-4711" not in json.dumps(s)
    assert "platform-wide rules" in s["decision_facts"]
    assert "platform-wide rules" in build(record(surface="default"))["decision_facts"]


def test_platform_options() -> None:
    options = DsaOptions(
        puid_salt=SALT,
        decision_ground="DECISION_GROUND_ILLEGAL_CONTENT",
        illegal_content_legal_ground="Example Act, section 1",
        decision_ground_reference_url="https://example.com/terms",
        territorial_scope=("DE", "NO"),
        content_language="EN",
    )
    s = statement_for(record(), MAPPING, options)
    assert s is not None and validate_statement(s) == []
    assert s["illegal_content_legal_ground"] == "Example Act, section 1"
    assert "Nudity Content" in s["illegal_content_explanation"]
    assert "incompatible_content_ground" not in s
    assert (s["territorial_scope"], s["content_language"]) == (["DE", "NO"], "EN")
    assert s["decision_ground_reference_url"] == "https://example.com/terms"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"puid_salt": "short"},
        {"decision_ground": "DECISION_GROUND_ILLEGAL_CONTENT"},
        {"decision_ground": "DECISION_GROUND_OTHER"},
        {"visibility_block": "DECISION_VISIBILITY_GONE"},
        {"visibility_review": "DECISION_VISIBILITY_OTHER"},
        {"error_category": "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"},
        {"territorial_scope": ("DE", "CH")},
        {"content_language": "german"},
        {"decision_ground_reference_url": "terms.html"},
        {"incompatible_content_ground": "x" * 501},
        {"incompatible_content_ground": ""},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DsaOptions(**{"puid_salt": SALT, **kwargs})


def test_same_input_same_statement() -> None:
    assert json.dumps(build(record())) == json.dumps(build(record()))


def test_shipped_policies_map_every_category() -> None:
    registry = PolicyRegistry(ROOT / "policies", TenancySettings())
    for tenant in registry.tenants():
        policy = registry.resolve(tenant, "default")
        assert policy is not None
        mapping = policy.resolved.dsa_categories
        assert set(mapping) == {*CODES, "NA"}, tenant
        assert set(mapping.values()) <= STATEMENT_CATEGORIES, tenant


# -- PUIDs ---------------------------------------------------------------------------------------


def test_puids_are_deterministic_and_salted() -> None:
    first = puid_for("acme", "ev-0001", SALT)
    assert first == puid_for("acme", "ev-0001", SALT)
    assert first == build(record())["puid"]
    assert first != puid_for("acme", "ev-0001", SALT + "x")
    assert first != puid_for("acme", "ev-0002", SALT)
    assert first != puid_for("other", "ev-0001", SALT)
    assert first.startswith("sor1-") and len(first) == 48
    assert "ev-0001" not in first


# -- no personal data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rec",
    [
        record(),
        record(source="cache"),
        record("review"),
        record(category=None, error=ErrorCode.CORRUPT_IMAGE),
        record(category=None, error=ErrorCode.ENGINE_ERROR, surface="profile_photo"),
    ],
)
def test_no_personal_data_leaves(rec: dict[str, Any]) -> None:
    statement = statement_for(rec, RESTRICTING, OPTIONS)
    assert statement is not None
    text = json.dumps(statement)
    for secret in (*SECRETS, RATIONALE, RAW_OUTPUT, ERROR_MESSAGE, "ab" * 32, "uploads"):
        assert secret not in text


# -- validator -----------------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return build(record())


def _drop(name: str) -> Any:
    return lambda s: s.pop(name)


def _set(name: str, value: Any) -> Any:
    return lambda s: s.__setitem__(name, value)


def _update(**values: Any) -> Any:
    return lambda s: s.update(values)


# fmt: off
RULES: list[tuple[str, Any, str]] = [
    *((f"required {n}", _drop(n), f"{n}: required") for n in (
        "decision_ground", "content_type", "category", "content_date", "application_date",
        "decision_facts", "source_type", "automated_detection", "automated_decision", "puid",
    )),
    ("empty content_type", _set("content_type", []), "content_type: required"),
    ("no decision_*", _drop("decision_visibility"), "at least one of"),
    ("monetary alone is enough", lambda s: (s.pop("decision_visibility"),
        s.update(decision_monetary="DECISION_MONETARY_SUSPENSION")), ""),
    ("unknown field", _set("user_id", "u-1"), "user_id: unknown field"),
    ("visibility enum", _set("decision_visibility", ["HIDDEN"]), "'HIDDEN' is not an allowed"),
    ("visibility array", _set("decision_visibility", "DECISION_VISIBILITY_CONTENT_REMOVED"),
     "must be an array"),
    ("repeated values", _set("content_type", ["CONTENT_TYPE_IMAGE"] * 2), "repeated values"),
    ("visibility other", _set("decision_visibility", ["DECISION_VISIBILITY_OTHER"]),
     "decision_visibility_other: required when"),
    ("visibility other long", _update(decision_visibility=["DECISION_VISIBILITY_OTHER"],
        decision_visibility_other="x" * 501), "501 characters, at most 500"),
    ("monetary other", _set("decision_monetary", "DECISION_MONETARY_OTHER"),
     "decision_monetary_other: required"),
    ("monetary enum", _set("decision_monetary", "FINE"), "decision_monetary: 'FINE'"),
    ("provision enum", _set("decision_provision", "X"), "decision_provision: 'X'"),
    ("account enum", _set("decision_account", "X"), "decision_account: 'X'"),
    ("account_type enum", _set("account_type", "X"), "account_type: 'X'"),
    ("ground enum", _set("decision_ground", "X"), "decision_ground: 'X'"),
    ("incompatible ground", _drop("incompatible_content_ground"),
     "incompatible_content_ground: required when"),
    ("incompatible explanation", _drop("incompatible_content_explanation"),
     "incompatible_content_explanation: required when"),
    ("illegal ground", _set("decision_ground", "DECISION_GROUND_ILLEGAL_CONTENT"),
     "illegal_content_legal_ground: required when"),
    ("illegal explanation", _update(decision_ground="DECISION_GROUND_ILLEGAL_CONTENT",
        illegal_content_legal_ground="Act"), "illegal_content_explanation: required"),
    ("incompatible_content_illegal value", _set("incompatible_content_illegal", "yes"),
     "incompatible_content_illegal: 'yes'"),
    ("incompatible_content_illegal ground", _update(incompatible_content_illegal="Yes",
        decision_ground="DECISION_GROUND_ILLEGAL_CONTENT", illegal_content_legal_ground="A",
        illegal_content_explanation="B"), "only with"),
    ("ground length", _set("incompatible_content_ground", "x" * 501), "at most 500"),
    ("explanation length", _set("incompatible_content_explanation", "x" * 2001), "at most 2000"),
    ("legal ground length", _update(decision_ground="DECISION_GROUND_ILLEGAL_CONTENT",
        illegal_content_legal_ground="x" * 501, illegal_content_explanation="B"),
     "illegal_content_legal_ground: 501"),
    ("reference url", _set("decision_ground_reference_url", "terms.html"), "not an http(s) URL"),
    ("reference url length", _set("decision_ground_reference_url", "https://e.com/" + "x" * 490),
     "decision_ground_reference_url: 504 characters"),
    ("content_type enum", _set("content_type", ["CONTENT_TYPE_PICTURE"]), "not an allowed"),
    ("content_type other", _set("content_type", ["CONTENT_TYPE_OTHER"]),
     "content_type_other: required"),
    ("category enum", _set("category", "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"),
     "category: 'STATEMENT_CATEGORY_PORNOGRAPHY"),
    ("category_addition enum", _set("category_addition", ["STATEMENT_CATEGORY_NON_CONSENSUAL_"
        "BEHAVIOUR"]), "category_addition: 'STATEMENT"),
    ("keyword enum", _set("category_specification", ["KEYWORD_NUDE"]), "'KEYWORD_NUDE'"),
    ("keyword other", _set("category_specification", ["KEYWORD_OTHER"]),
     "category_specification_other: required"),
    ("territory", _set("territorial_scope", ["DE", "CH"]), "territorial_scope: 'CH'"),
    ("territory null allowed", _set("territorial_scope", None), ""),
    ("language", _set("content_language", "en"), "content_language: 'en'"),
    ("content_date format", _set("content_date", "29.11.2026"), "not a YYYY-MM-DD date"),
    ("content_date calendar", _set("content_date", "2026-02-30"), "not a calendar date"),
    ("content_date range", _set("content_date", "1999-12-31"), "outside 2000-01-01"),
    ("application_date range", _set("application_date", "2019-12-31"), "outside 2020-01-01"),
    ("application_date late", _set("application_date", "2038-01-02"), "2038-01-01"),
    ("end date format", _set("end_date_visibility_restriction", "soon"), "YYYY-MM-DD"),
    ("end date blank", _set("end_date_visibility_restriction", ""), ""),
    ("facts length", _set("decision_facts", "x" * 5001), "decision_facts: 5001 characters"),
    ("facts type", _set("decision_facts", 5), "decision_facts: must be a string"),
    ("source enum", _set("source_type", "SOURCE_USER"), "source_type: 'SOURCE_USER'"),
    ("source identity voluntary", _set("source_identity", "Flagger Ltd"), "must be left out"),
    ("source identity length", _update(source_type="SOURCE_TRUSTED_FLAGGER",
        source_identity="x" * 501), "source_identity: 501"),
    ("automated_detection literal", _set("automated_detection", "KEY_YES"), "'KEY_YES'"),
    ("automated_detection bool", _set("automated_detection", True), "automated_detection: True"),
    ("automated_decision enum", _set("automated_decision", "AUTOMATED_DECISION_YES"), "not an"),
    ("puid characters", _set("puid", "sor1/abc"), "puid: only the characters"),
    ("puid length", _set("puid", "a" * 501), "puid: 501 characters"),
    ("content_id key", _set("content_id", {"ISBN": "9780306406157"}), "only key is 'EAN-13'"),
    ("content_id digits", _set("content_id", {"EAN-13": "978030640615"}), "13 digits"),
    ("content_id valid", _set("content_id", {"EAN-13": "9780306406157"}), ""),
]
# fmt: on


@pytest.mark.parametrize(("mutate", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_validator_rule(mutate: Any, expected: str) -> None:
    statement = _valid()
    mutate(statement)
    problems = validate_statement(statement)
    if not expected:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


# -- batches -------------------------------------------------------------------------------------


def test_batches() -> None:
    items = [{"n": i} for i in range(250)]
    assert [len(b) for b in batches(items)] == [100, 100, 50]
    assert [x for b in batches(items) for x in b] == items
    assert [len(b) for b in batches(items[:100])] == [100]
    assert list(batches([])) == []
    assert [len(b) for b in batches(items[:7], size=3)] == [3, 3, 1]
    with pytest.raises(ValueError, match=r"1\.\.100"):
        list(batches(items, size=101))
