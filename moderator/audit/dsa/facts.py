"""The fixed texts of a statement of reasons: `decision_facts` and the ground's explanation.

Built only from closed sets: the taxonomy's category names, the policy version (hex), a surface
the tenant's policy declares, the detection path, one phrase per error code and whether the
upload time was usable. Nothing the model wrote, no error message, object key or user id (any of
them may hold personal data).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from moderator.events.verdict import CATEGORIES, category_code

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
    if code in _NAMES and code != "NA":
        return f'the policy category "{_NAMES[code]}" ({code})'
    return "content the policy does not allow, without naming a specific category"


def explanation(code: str | None, error: str | None, block: bool) -> str:
    """The ground's explanation: why such an image is restricted."""
    if error is not None:
        return "The content policy does not accept images that cannot be checked automatically."
    what = _category_phrase(code or "NA")
    how = "blocked" if block else "hidden until a moderator has reviewed it"
    return f"The image was assessed as falling under {what}; such images are {how}."


def decision_facts(
    verdict: Mapping[str, Any],
    surfaces: Collection[str],
    code: str | None,
    error: str | None,
    block: bool,
    *,
    upload_date_known: bool = True,
) -> str:
    """The statement's `decision_facts`. `upload_date_known=False` adds that `content_date` is
    the decision's date: the one place the schema lets a statement say so."""
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
    rules = f"the platform's content policy for uploaded images ({version_text}, {where})"
    if error is not None:
        reason = _ERROR_PHRASES.get(error, "processing failed")
        parts = [
            f"The uploaded image could not be checked automatically: {reason}.",
            f"Under {rules}, images that cannot be checked are restricted.",
        ]
    else:
        what = _category_phrase(code or "NA")
        if verdict.get("source") == "cache":
            # The cache key is the image, the model input and the model, not the policy
            # version: the earlier assessment may have been made for another tenant.
            parts = [
                "The uploaded image is identical to an image the same automated image "
                "classification model had already assessed; that assessment was reused and "
                f"decided under {rules}.",
                f"The assessment placed the image under {what}.",
            ]
        else:
            parts = [
                "The uploaded image was assessed by an automated image classification model "
                f"against {rules}.",
                f"The model placed the image under {what}.",
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
