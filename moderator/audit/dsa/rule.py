"""Which rule of the policy turned an assessment into a restriction, for a statement's texts.

A statement of reasons is public, so it must say why the image was restricted as the policy
decided it. With a score and score thresholds the score decides, whatever the rating: a Safe
rating whose score reaches the row's `block_at` is blocked, and the statement then names the
score and the threshold, not a category the model never named. Without them the rating and the
category's action decide. The rule is traced with `moderator.explain.build.trace` (the rules of
`moderator.policy.decide`) on the decision table of the compiled policy document the verdict was
decided under, and used only when it gives the recorded decision. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moderator.audit.dsa.facts import Assessed
from moderator.events.verdict import category_code
from moderator.explain.build import read_table, trace

RATINGS = ("Safe", "Unsafe")


def assessed(verdict: Mapping[str, Any], document: Mapping[str, Any] | None) -> Assessed:
    """What a statement says of the assessment of a restricting `verdict` (which has one),
    decided under the compiled policy `document` (None when it is not available)."""
    assessment = verdict["assessment"]
    category = str(assessment["category"])
    code = category_code(category)
    rating = assessment.get("rating")
    rating = rating if rating in RATINGS else None
    score = _number(assessment.get("score"))
    table = read_table(document)
    if table is not None:
        rule = trace(table.row_for(category), rating, score)
        if rule.decision == verdict.get("decision"):
            if rule.kind != "threshold":
                return Assessed(code, rating)
            return Assessed(code, rating, score=score, threshold=rule.threshold_value)
    if rating == "Safe" and score is not None:
        # Only a score threshold restricts an image rated Safe (docs/policies.md), though the
        # table that says which one is not at hand.
        return Assessed(code, rating, score=score)
    return Assessed(code, rating)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
