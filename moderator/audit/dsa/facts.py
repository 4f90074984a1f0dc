"""The fixed texts of a statement of reasons: `decision_facts` and the ground's explanation.

Built only from closed sets and numbers: the taxonomy's category names, the model's rating, the
score and the policy threshold it reached when the score decided, the policy version (hex), a
surface the tenant's policy declares, the detection path, one phrase per error code and whether
the upload time was usable. Nothing the model wrote, no error message, object key or user id
(any of them may hold personal data).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from moderator.events.verdict import CATEGORIES, category_code


@dataclass(frozen=True)
class Assessed:
    """What a statement says of the assessment behind a restriction (`rule.assessed`)."""

    code: str  # the category code: "O1".."O9", "NA"
    rating: str | None  # "Safe", "Unsafe"; None when not recorded
    score: float | None = None  # set when the score decided (a score threshold), else None
    threshold: float | None = None  # the policy's threshold it reached; None when not known

    @property
    def by_score(self) -> bool:
        return self.score is not None


_ERROR_PHRASES = {
    "access_denied": "the file could not be read for checking",
    "fetch_failed": "the file could not be retrieved for checking",
    "object_too_large": "the file is larger than the platform accepts for checking",
    "unsupported_format": "the file is not in a supported image format",
    "corrupt_image": "the file is damaged or is not a valid image",
    "decompression_bomb": "the image is too large once decoded",
    "decode_timeout": "the image took too long to decode for checking",
    "engine_timeout": "the automated check did not finish in time",
    "engine_error": "the automated check failed",
    "unparseable_output": "the automated check gave no usable answer",
}
_VERSION = re.compile(r"^[0-9a-f]{4,64}$")
_NAMES = {category_code(name): name.split(":", 1)[1].strip() for name in CATEGORIES}


def _category_phrase(code: str) -> str:
    if _named(code):
        return f'the policy category "{_NAMES[code]}" ({code})'
    return "content the policy does not allow, without naming a specific category"


def _named(code: str) -> bool:
    return code in _NAMES and code != "NA"


def _rated(a: Assessed) -> str:
    """What the assessment said: `rated the image safe and named no specific category of the
    policy`, `rated the image unsafe and placed it under the policy category "..." (O6)`."""
    if a.rating is None:
        if _named(a.code):
            return f"placed the image under {_category_phrase(a.code)}"
        return "named no specific category of the policy for the image"
    named = (
        f"placed it under {_category_phrase(a.code)}"
        if _named(a.code)
        else "named no specific category of the policy"
    )
    return f"rated the image {a.rating.lower()} and {named}"


def _scored(a: Assessed) -> str:
    return (
        f"giving it a score of {_exact(a.score)} (the estimated likelihood, from 0 to 1, that the "
        "image is unsafe)"
    )


def _threshold_rule(a: Assessed, block: bool) -> str:
    """The policy's score rule that restricted the image, as a clause."""
    scope = "in that category" if _named(a.code) else "for which no specific category is named"
    if a.threshold is None:
        how = "blocking" if block else "hiding until a moderator has reviewed them"
        return f"that score reached the policy's threshold for {how} such images"
    at = f"at a score of {_exact(a.threshold)} or more"
    if block:
        return f"the policy blocks images {scope} {at}"
    return f"the policy hides images {scope} {at} until a moderator has reviewed them"


def _exact(value: float | None) -> str:
    """A number as recorded (`0.3043`, not `0.304`), never in exponent form."""
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else f"{text}.0"


def explanation(assessed: Assessed | None, error: str | None, block: bool) -> str:
    """The ground's explanation: why such an image is restricted."""
    if error is not None or assessed is None:
        return "The content policy does not accept images that cannot be checked automatically."
    if assessed.by_score:
        return (
            f"An automated assessment {_rated(assessed)}, {_scored(assessed)}; "
            f"{_threshold_rule(assessed, block)}."
        )
    what = _category_phrase(assessed.code)
    how = "blocked" if block else "hidden until a moderator has reviewed it"
    return f"The image was assessed as falling under {what}; such images are {how}."


def _assessment_sentences(who: str, a: Assessed, block: bool) -> list[str]:
    """What `who` (the model, a reused assessment) said, and the score rule that restricted
    the image when the score decided."""
    if not a.by_score:
        return [f"{who} placed the image under {_category_phrase(a.code)}."]
    rule = _threshold_rule(a, block)
    return [f"{who} {_rated(a)}, {_scored(a)}.", rule[0].upper() + rule[1:] + "."]


def decision_facts(
    verdict: Mapping[str, Any],
    surfaces: Collection[str],
    assessed: Assessed | None,
    error: str | None,
    block: bool,
    *,
    upload_date_known: bool = True,
) -> str:
    """The statement's `decision_facts`. `upload_date_known=False` adds that `content_date` is
    the decision's date: the one place the schema lets a statement say so."""
    rules = _rules(verdict, surfaces)
    if error is not None or assessed is None:
        reason = _ERROR_PHRASES.get(error or "", "processing failed")
        parts = [
            f"The uploaded image could not be checked automatically: {reason}.",
            f"Under {rules}, images that cannot be checked are restricted.",
        ]
    elif verdict.get("source") == "cache":
        # The cache key is the image, the model input and the model, not the policy
        # version: the earlier assessment may have been made for another tenant.
        parts = [
            "The uploaded image is identical to an image the same automated image "
            "classification model had already assessed; that assessment was reused and "
            f"decided under {rules}.",
            *_assessment_sentences("The assessment", assessed, block),
        ]
    else:
        parts = [
            "The uploaded image was assessed by an automated image classification model "
            f"against {rules}.",
            *_assessment_sentences("The model", assessed, block),
        ]
    if block:
        parts.append("The upload was blocked automatically, without review by a person.")
    else:
        parts.append(
            "The image was hidden automatically until a moderator reviews it; no person was "
            "involved in hiding it."
        )
    if not upload_date_known:
        parts.append(
            "No usable upload time was recorded for the image; the content date given is the "
            "date of the decision."
        )
    return " ".join(parts)


def _rules(verdict: Mapping[str, Any], surfaces: Collection[str]) -> str:
    """The rules that decided: the policy version and, when the tenant's policy declares it,
    the upload surface."""
    policy = verdict.get("policy")
    policy = policy if isinstance(policy, Mapping) else {}
    version = str(policy.get("version", ""))
    version_text = f"policy version {version}" if _VERSION.match(version) else "the policy in force"
    surface = policy.get("surface")
    where = (
        f"the rules for the {surface!r} upload surface"
        if isinstance(surface, str) and surface != "default" and surface in surfaces
        else "the platform-wide rules"
    )
    return f"the platform's content policy for uploaded images ({version_text}, {where})"
