"""Decisions: a model assessment (or an error code) under a resolved policy → allow/review/block.

Pure functions; docs/policies.md shows the same rules as a table. For an assessment:

1. The rule is the category named by the assessment's code (`"O4: ..."` → O4); `NA` and any
   unknown category use `none_applying`.
2. With a score and a rule that sets `block_at` or `review_at`, the score decides:
   score >= block_at → block, else score >= review_at → review, else allow (the rating and
   the rule's action are not consulted).
3. Otherwise the rating decides: Safe → allow, Unsafe → the rule's action.
4. A category in `allowed` mode never blocks (block becomes review), whatever the engine said:
   an engine may ignore the prompt.

For an error: `on_error[code]`, else `on_error["default"]`; a security error never allows.
"""

from __future__ import annotations

from typing import Any

from moderator.errors import DEAD_LETTER_ONLY, SECURITY_ERRORS, ErrorCode
from moderator.events.verdict import Assessment, Decision, category_code
from moderator.policy.document import CODES
from moderator.policy.model import ResolvedCategory, ResolvedNoneApplying, ResolvedPolicy

DECISION_COLUMNS = ("category", "mode", "on Unsafe", "block_at", "review_at", "rule")
ERROR_COLUMNS = ("error", "decision")

Rule = ResolvedCategory | ResolvedNoneApplying


def rule_for(policy: ResolvedPolicy, category: str) -> Rule:
    """The category rule an assessment's category string selects (NA for anything unknown)."""
    code = category_code(category).strip()
    return policy.category(code) if code in CODES else policy.none_applying


def decide(policy: ResolvedPolicy, assessment: Assessment) -> Decision:
    """The decision for one model assessment (see the module docstring)."""
    rule = rule_for(policy, assessment.category)
    score = assessment.score
    decision: Decision
    if score is not None and _has_thresholds(rule):
        if rule.block_at is not None and score >= rule.block_at:
            decision = "block"
        elif rule.review_at is not None and score >= rule.review_at:
            decision = "review"
        else:
            decision = "allow"
    elif assessment.rating == "Unsafe":
        decision = rule.action
    else:
        decision = "allow"
    return _enforce_mode(rule, decision)


def error_decision(policy: ResolvedPolicy, code: ErrorCode) -> Decision:
    """The decision for an event that failed with `code`."""
    decision = policy.on_error.get(code.value, policy.on_error.get("default", "review"))
    if code in SECURITY_ERRORS and decision == "allow":
        return "review"
    return decision


def decision_table_json(policy: ResolvedPolicy) -> dict[str, Any]:
    """Everything `decide` and `error_decision` read, canonical and JSON-ready (hashed)."""
    return {
        "categories": {
            c.code: {
                "mode": c.mode,
                "action": c.action,
                "block_at": c.block_at,
                "review_at": c.review_at,
            }
            for c in policy.categories
        },
        "none_applying": {
            "action": policy.none_applying.action,
            "block_at": policy.none_applying.block_at,
            "review_at": policy.none_applying.review_at,
        },
        "on_error": {code.value: error_decision(policy, code) for code in sorted(ErrorCode)},
    }


def decision_rows(policy: ResolvedPolicy) -> list[tuple[str, ...]]:
    """The category rules as rows under DECISION_COLUMNS (for `policy render` and docs)."""
    rows: list[tuple[str, ...]] = [
        (c.name, c.mode, c.action, _number(c.block_at), _number(c.review_at), rule_text(c))
        for c in policy.categories
    ]
    na = policy.none_applying
    rows.append(
        (
            "NA: None applying (and unknown categories)",
            "-",
            na.action,
            _number(na.block_at),
            _number(na.review_at),
            rule_text(na),
        )
    )
    return rows


def error_rows(policy: ResolvedPolicy) -> list[tuple[str, str]]:
    """Every error code a verdict can carry and its decision, under ERROR_COLUMNS."""
    codes = (code for code in sorted(ErrorCode) if code not in DEAD_LETTER_ONLY)
    return [(code.value, error_decision(policy, code)) for code in codes]


def rule_text(rule: Rule) -> str:
    """One rule in words, with the `allowed` cap already applied."""
    unsafe = _enforce_mode(rule, rule.action)
    parts = []
    if _has_thresholds(rule):
        steps = []
        if rule.block_at is not None:
            block = _enforce_mode(rule, "block")
            steps.append(f"score >= {_number(rule.block_at)} -> {block}")
        if rule.review_at is not None:
            steps.append(f"score >= {_number(rule.review_at)} -> review")
        steps.append("else allow")
        parts.append("; ".join(steps))
        parts.append(f"without a score: Unsafe -> {unsafe}, Safe -> allow")
    else:
        parts.append(f"Unsafe -> {unsafe}; Safe -> allow")
    if isinstance(rule, ResolvedCategory) and rule.mode == "allowed":
        parts.append("allowed: never blocks (block becomes review)")
    return " | ".join(parts)


def _has_thresholds(rule: Rule) -> bool:
    return rule.block_at is not None or rule.review_at is not None


def _enforce_mode(rule: Rule, decision: Decision) -> Decision:
    if isinstance(rule, ResolvedCategory) and rule.mode == "allowed" and decision == "block":
        return "review"
    return decision


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
