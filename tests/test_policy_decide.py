"""Decisions, checked exhaustively against an oracle written as lookup tables."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest

from moderator.errors import SECURITY_ERRORS, ErrorCode
from moderator.events.verdict import CATEGORIES, Assessment
from moderator.policy.decide import (
    DECISION_COLUMNS,
    ERROR_COLUMNS,
    decide,
    decision_rows,
    decision_table_json,
    error_decision,
    error_rows,
    rule_for,
)
from moderator.policy.model import ResolvedPolicy
from moderator.policy.resolve import resolve
from tests.policy_fixtures import KEY_PREFIX, directory

BASE = resolve(directory(), "acme", "default", KEY_PREFIX)
BLOCK_AT, REVIEW_AT = 0.8, 0.4

# --- the oracle --------------------------------------------------------------------------------
# Which threshold band each test score falls in, given BLOCK_AT/REVIEW_AT above.
SCORE_BAND = {0.0: "low", 0.1: "low", 0.4: "mid", 0.5: "mid", 0.8: "high", 0.9: "high", 1.0: "high"}
# (thresholds set, band) -> decision before the mode cap.
BY_SCORE = {
    ("both", "low"): "allow",
    ("both", "mid"): "review",
    ("both", "high"): "block",
    ("block_at", "low"): "allow",
    ("block_at", "mid"): "allow",
    ("block_at", "high"): "block",
    ("review_at", "low"): "allow",
    ("review_at", "mid"): "review",
    ("review_at", "high"): "review",
}
THRESHOLDS = {
    "none": (None, None),
    "both": (BLOCK_AT, REVIEW_AT),
    "block_at": (BLOCK_AT, None),
    "review_at": (None, REVIEW_AT),
}
# Mode cap: what each decision becomes under each mode.
CAP = {
    "default": {"allow": "allow", "review": "review", "block": "block"},
    "sensitive": {"allow": "allow", "review": "review", "block": "block"},
    "allowed": {"allow": "allow", "review": "review", "block": "review"},
}


def oracle(mode: str, action: str, thresholds: str, score: float | None, rating: str) -> str:
    if score is not None and thresholds != "none":
        raw = BY_SCORE[(thresholds, SCORE_BAND[score])]
    else:
        raw = {"Safe": "allow", "Unsafe": action}[rating]
    return CAP[mode][raw]


def with_category(code: str, **changes: Any) -> ResolvedPolicy:
    categories = tuple(
        dataclasses.replace(c, **changes) if c.code == code else c for c in BASE.categories
    )
    return dataclasses.replace(BASE, categories=categories)


def with_na(**changes: Any) -> ResolvedPolicy:
    return dataclasses.replace(
        BASE, none_applying=dataclasses.replace(BASE.none_applying, **changes)
    )


SCORES = [None, *SCORE_BAND]
COMBINATIONS = list(
    itertools.product(
        ["default", "allowed", "sensitive"],
        ["block", "review", "allow"],
        list(THRESHOLDS),
        SCORES,
        ["Safe", "Unsafe"],
    )
)


@pytest.mark.parametrize(("mode", "action", "thresholds", "score", "rating"), COMBINATIONS)
def test_category_decisions_match_the_oracle(
    mode: str, action: str, thresholds: str, score: float | None, rating: str
) -> None:
    block_at, review_at = THRESHOLDS[thresholds]
    policy = with_category("O3", mode=mode, action=action, block_at=block_at, review_at=review_at)
    assessment = Assessment(rating=rating, category=CATEGORIES[2], score=score)
    assert decide(policy, assessment) == oracle(mode, action, thresholds, score, rating)


def test_the_combination_count() -> None:
    assert len(COMBINATIONS) == 3 * 3 * 4 * 8 * 2


@pytest.mark.parametrize(
    ("action", "thresholds", "score", "rating"),
    list(
        itertools.product(
            ["block", "review", "allow"], list(THRESHOLDS), SCORES, ["Safe", "Unsafe"]
        )
    ),
)
def test_none_applying_and_unknown_categories(
    action: str, thresholds: str, score: float | None, rating: str
) -> None:
    block_at, review_at = THRESHOLDS[thresholds]
    policy = with_na(action=action, block_at=block_at, review_at=review_at)
    # Every category allowed: NA has no mode, so nothing caps it.
    policy = dataclasses.replace(
        policy,
        categories=tuple(dataclasses.replace(c, mode="allowed") for c in policy.categories),
    )
    for category in ("NA: None applying", "NA", "O10: Made up", "o1: lower case", "", "nonsense"):
        assessment = Assessment(rating=rating, category=category, score=score)
        assert decide(policy, assessment) == oracle("default", action, thresholds, score, rating)


def test_the_category_is_chosen_by_its_code() -> None:
    policy = with_category("O7", action="review")
    for category in ("O7: Self-Harm", "O7", "O7: some other wording"):
        assert rule_for(policy, category) is policy.category("O7")
        assert decide(policy, Assessment(rating="Unsafe", category=category)) == "review"
    assert decide(policy, Assessment(rating="Unsafe", category="O6: Weapons")) == "block"
    assert rule_for(policy, "NA: None applying") is policy.none_applying


def test_category_thresholds_do_not_leak_to_other_categories() -> None:
    policy = with_category("O1", block_at=0.1)
    low = Assessment(rating="Safe", category=CATEGORIES[1], score=0.5)
    assert decide(policy, low) == "allow"
    assert decide(policy, low.model_copy(update={"category": CATEGORIES[0]})) == "block"
    na = Assessment(rating="Unsafe", category=CATEGORIES[-1], score=0.99)
    assert decide(policy, na) == "review"  # NA: no thresholds of its own, action review


# --- errors -------------------------------------------------------------------------------------

ON_ERROR_CASES: list[dict[str, str]] = [
    {"default": "review"},
    {"default": "block"},
    {"default": "allow"},  # only reachable by bypassing validation: still never allows security
    {"default": "block", "engine_timeout": "allow", "tenant_mismatch": "allow"},
    {"engine_error": "block"},  # no default: review
]


def error_oracle(on_error: dict[str, str], code: ErrorCode) -> str:
    action = on_error[code.value] if code.value in on_error else on_error.get("default", "review")
    security = {
        "tenant_mismatch",
        "unknown_tenant",
        "decompression_bomb",
        "decode_timeout",
        "corrupt_image",
        "unsupported_format",
        "object_too_large",
    }
    return "review" if code.value in security and action == "allow" else action


@pytest.mark.parametrize("code", list(ErrorCode))
@pytest.mark.parametrize("on_error", ON_ERROR_CASES)
def test_error_decisions(on_error: dict[str, str], code: ErrorCode) -> None:
    policy = dataclasses.replace(BASE, on_error=on_error)
    assert error_decision(policy, code) == error_oracle(on_error, code)


def test_security_errors_never_allow() -> None:
    policy = dataclasses.replace(BASE, on_error={c.value: "allow" for c in ErrorCode})
    for code in ErrorCode:
        expected = "review" if code in SECURITY_ERRORS else "allow"
        assert error_decision(policy, code) == expected
    assert {c.value for c in SECURITY_ERRORS} == {
        "tenant_mismatch",
        "unknown_tenant",
        "decompression_bomb",
        "decode_timeout",
        "corrupt_image",  # an uploader can cause each of these on purpose
        "unsupported_format",
        "object_too_large",
    }


# --- the table as data --------------------------------------------------------------------------


def test_decision_rows() -> None:
    policy = with_category("O4", mode="allowed", action="block", block_at=0.9, review_at=0.5)
    rows = decision_rows(policy)
    assert len(rows) == 10 and all(len(row) == len(DECISION_COLUMNS) for row in rows)
    assert [row[0] for row in rows[:9]] == list(CATEGORIES[:9])
    assert rows[3][:5] == ("O4: Nudity Content", "allowed", "block", "0.9", "0.5")
    assert rows[3][5] == (
        "score >= 0.9 -> review; score >= 0.5 -> review; else allow | "
        "without a score: Unsafe -> review, Safe -> allow | "
        "allowed: never blocks (block becomes review)"
    )
    assert rows[0][1:] == ("default", "block", "-", "-", "Unsafe -> block; Safe -> allow")
    assert rows[9][:3] == ("NA: None applying (and unknown categories)", "-", "review")
    errors = error_rows(policy)
    assert len(ERROR_COLUMNS) == 2
    assert {code for code, _ in errors} == {c.value for c in ErrorCode} - {"malformed_event"}
    assert dict(errors)["tenant_mismatch"] == "review"


def test_decision_table_json_covers_what_decisions_read() -> None:
    table = decision_table_json(BASE)
    assert json.loads(json.dumps(table)) == table
    assert set(table) == {"categories", "none_applying", "on_error"}
    assert set(table["on_error"]) == {c.value for c in ErrorCode}
    assert table["categories"]["O1"] == {
        "mode": "default",
        "action": "block",
        "block_at": None,
        "review_at": None,
    }
    changed = [
        with_category("O2", mode="sensitive"),
        with_category("O2", action="review"),
        with_category("O2", block_at=0.5),
        with_category("O2", review_at=0.5),
        with_na(action="block"),
        with_na(review_at=0.3),
        dataclasses.replace(BASE, on_error={"default": "review", "fetch_failed": "block"}),
    ]
    for policy in changed:
        assert decision_table_json(policy) != table
    # Texts, metadata and equivalent on_error spellings do not change decisions.
    same = [
        with_category("O2", should_not=("other",), allowed_text="x"),
        dataclasses.replace(BASE, description="d", owner="o", dsa_categories={"O1": "X"}),
        dataclasses.replace(BASE, on_error={"default": "review", "fetch_failed": "review"}),
    ]
    for policy in same:
        assert decision_table_json(policy) == table
