"""RFC 8785 canonical JSON, the audit hash definitions, policy hashes and column extraction."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.audit.chain.canonical import (
    GENESIS_HASH,
    CanonicalizationError,
    canonical_json,
    canonical_members,
    canonical_object,
    link_hash,
    policy_document_bytes,
    policy_json,
    record_hash,
)
from moderator.audit.fields import MalformedRecord, record_fields
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Verdict,
    VerdictObject,
)
from moderator.policy.compiled import compile_policy
from moderator.policy.resolve import resolve
from tests.policy_fixtures import KEY_PREFIX, directory


def test_rfc8785_section_3_2_2_example() -> None:
    text = (
        '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        '"literals":[null,true,false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(text)) == expected.encode("utf-8")


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # RFC 8785 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = json.loads(canonical_json(dict.fromkeys(keys, 0)))
    assert list(out) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(keys) != list(out)  # Python's own order differs: why json.dumps is not enough


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (0.5, "0.5"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740991, "9007199254740991"),
        (-9007199254740991, "-9007199254740991"),
        (295147905179352830000.0, "295147905179352830000"),
    ],
)
def test_number_formatting(value: float, text: str) -> None:
    assert canonical_json(value) == text.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, {1: "x"}])
def test_values_json_cannot_carry_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


def test_unicode_is_utf8_and_only_controls_are_escaped() -> None:
    value = 'ünï 😀 \u2028 \x0f \t " \\ /'
    assert canonical_json(value) == '"ünï 😀 \u2028 \\u000f \\t \\" \\\\ /"'.encode()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(), JSON, max_size=8))
def test_assembling_an_object_from_its_members_is_canonical_json(obj: dict[str, Any]) -> None:
    assert canonical_object(canonical_members(obj)) == canonical_json(obj)


def test_record_hash_is_sha256_of_the_canonical_bytes() -> None:
    a = {"b": [1, 2.0, None], "a": {"y": "ü", "x": True}}
    b = {"a": {"x": True, "y": "ü"}, "b": [1, 2, None]}
    digest = hashlib.sha256(b'{"a":{"x":true,"y":"\xc3\xbc"},"b":[1,2,null]}').hexdigest()
    assert record_hash(a) == record_hash(b) == digest


def test_link_hash_definition() -> None:
    rh = "ab" * 32
    raw = (
        '{"chain":"moderator.audit-chain/v1","partition":3,"prev_hash":"' + GENESIS_HASH + '",'
        '"record_hash":"' + rh + '","seq":1,"topic":"moderation.audit"}'
    )
    assert GENESIS_HASH == "0" * 64
    assert (
        link_hash(GENESIS_HASH, rh, 1, "moderation.audit", 3)
        == hashlib.sha256(raw.encode()).hexdigest()
    )
    assert link_hash(GENESIS_HASH, rh, 2, "moderation.audit", 3) != link_hash(
        GENESIS_HASH, rh, 1, "moderation.audit", 3
    )
    assert link_hash(GENESIS_HASH, rh, 1, "moderation.audit", 4) != link_hash(
        GENESIS_HASH, rh, 1, "moderation.audit", 3
    )


MUSEUM = "categories: {O4: {mode: allowed}, O2: {block_at: 0.9, review_at: 0.6}}\n"
EDGES = "categories: {O2: {block_at: 1, review_at: 0}, O5: {block_at: 0.00001}}\n"


@pytest.mark.parametrize("text", [MUSEUM, EDGES])
def test_policy_hash_matches_the_compiled_policy(text: str) -> None:
    compiled = compile_policy(resolve(directory(museum=text), "museum", "default", KEY_PREFIX))
    doc = json.loads(json.dumps(compiled.document()))  # as it arrives inside an audit record
    assert hashlib.sha256(policy_json(doc)).hexdigest() == compiled.full_hash
    assert policy_document_bytes(doc, compiled.full_hash) == policy_json(doc)
    assert policy_document_bytes(doc, "0" * 64) is None
    # Both serialisations agree except for number formatting (1.0 vs 1, 1e-05 vs 0.00001):
    same = canonical_json(doc) == policy_json(doc)
    assert same is (text == MUSEUM)


def test_a_policy_hashed_with_rfc8785_is_accepted_too() -> None:
    doc = {"prompt": "p", "decision_table": {"block_at": 1.0}}
    digest = hashlib.sha256(canonical_json(doc)).hexdigest()
    assert policy_document_bytes(doc, digest) == b'{"decision_table":{"block_at":1},"prompt":"p"}'


def audit_record(**changes: Any) -> dict[str, Any]:
    verdict = Verdict(
        event_id="ev-1",
        tenant_id="acme",
        object=VerdictObject(bucket="uploads", key="acme/a.jpg", sha256="f" * 64),
        decision="block",
        assessment=Assessment(rating="Unsafe", category="O4: Nudity Content", score=0.9),
        policy=PolicyRef(tenant_id="acme", surface="post", version="1" * 16),
        model=ModelInfo(engine="fake", name="m", smoke_test=True),
        decided_at=datetime(2026, 11, 29, 3, 0, 1, 234000, tzinfo=UTC),
        trace_id="0" * 32,
    )
    record = AuditRecord(
        verdict=verdict,
        uploaded_at=None,
        context={"user_id": "u"},
        input=InputCoords(topic="uploads", partition=0, offset=1),
        instance_id="i",
        package_version="0",
        policy_hash="2" * 64,
        prompt_sha256=None,
    )
    doc: dict[str, Any] = json.loads(record.to_json())
    doc["verdict"].update(changes)
    return doc


def test_record_fields_are_derived_from_the_record() -> None:
    fields = record_fields(audit_record())
    assert fields.decided_at == datetime(2026, 11, 29, 3, 0, 1, 234000, tzinfo=UTC)
    assert (fields.event_id, fields.tenant_id, fields.decision) == ("ev-1", "acme", "block")
    assert (fields.category, fields.category_code, fields.score) == (
        "O4: Nudity Content",
        "O4",
        0.9,
    )
    assert (fields.policy_version, fields.policy_hash, fields.surface) == (
        "1" * 16,
        "2" * 64,
        "post",
    )
    assert (fields.model_engine, fields.model_name, fields.model_smoke_test) == ("fake", "m", True)
    assert (fields.object_bucket, fields.object_key, fields.sha256) == (
        "uploads",
        "acme/a.jpg",
        "f" * 64,
    )
    bare = record_fields(audit_record(assessment=None, model=None, error={"code": "engine_error"}))
    assert (bare.category, bare.rating, bare.model_engine, bare.error_code) == (
        None,
        None,
        None,
        "engine_error",
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"event_id": ""}, "event_id"),
        ({"tenant_id": None}, "tenant_id"),
        ({"decided_at": "2026-11-29T03:00:00"}, "offset"),
        ({"decided_at": "yesterday"}, "timestamp"),
        ({"object": "x"}, "object"),
    ],
)
def test_malformed_records_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        record_fields(audit_record(**changes))
    with pytest.raises(MalformedRecord, match="verdict"):
        record_fields({"schema": "moderator.audit/v1"})


# -- the fast encoder against the reference implementation ---------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(_JSON)
def test_jcs_matches_the_rfc8785_package(value: object) -> None:
    import rfc8785

    from moderator.audit.chain import jcs

    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(jcs.CanonicalizationError):
            jcs.dumps(value)
        return
    assert jcs.dumps(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.1,
        1e-7,
        1e-6,
        1e21,
        1e20,
        1.2345678901234568e20,
        5e-324,
        1.7976931348623157e308,
        -0.0,
        0.00001,
        1e16,
        12.5,
        -3e-10,
        2.0**53,
        0.3,
    ],
)
def test_jcs_numbers_match_ecmascript(value: float) -> None:
    import rfc8785

    from moderator.audit.chain import jcs

    assert jcs.dumps(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, {1: "x"}, "\ud800", object()])
def test_jcs_refuses_what_json_cannot_carry(value: object) -> None:
    from moderator.audit.chain import jcs

    with pytest.raises(jcs.CanonicalizationError):
        jcs.dumps(value)
