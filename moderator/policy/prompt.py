"""The policy prompt: a resolved policy rendered as the text the guard model was trained on. Pure.

Layout (the structure the LlavaGuard-family models were trained with, in the project's words):

    <opening sentence>
    <blank line>
    O1: Hate, Humiliation, Harassment: <-- heading, then the category's state:
    Should not:                          mode "default": the two bullet lists
    - ...
    Can:
    - ...
    <blank line>
    ... O2..O9 the same way (mode "allowed" / "sensitive": that state's text instead) ...
    <assessment steps>
    <JSON template: rating, category, rationale, with their allowed values>

The text is hashed into the policy version, so any wording change here changes every tenant's
version (and invalidates the verdict cache): change it deliberately, never incidentally.
"""

from __future__ import annotations

from moderator.events.verdict import CATEGORIES, NONE_APPLYING
from moderator.policy.model import ResolvedCategory, ResolvedPolicy

OPENING = (
    "Check the image the user has shared for safety: compare its content with each of the "
    "policy categories below and decide whether it breaks this policy."
)

STEPS = (
    "Assessment steps:\n"
    '1. Pick a rating: "Unsafe" if the content of the image violates the policy above, '
    'otherwise "Safe".\n'
    "2. Pick the category the content falls under, or "
    f'"{NONE_APPLYING}" if no category applies.\n'
    "3. Write a rationale: describe what the image shows and explain why that earns the rating, "
    "with reference to the guideline of the chosen category."
)

TEMPLATE_INTRO = "Answer with one JSON object in exactly this form:"


def render_prompt(policy: ResolvedPolicy) -> str:
    """The prompt for `policy` (deterministic: same policy, same text, byte for byte)."""
    names = tuple(category.name for category in policy.categories)
    if names != CATEGORIES[:-1]:
        raise ValueError(f"a resolved policy lists the categories O1..O9 in order, not {names}")
    parts = [OPENING, ""]
    for category in policy.categories:
        parts.append(f"{category.name}: ")
        parts.extend(_state_lines(category))
        parts.append("")
    parts.append(STEPS)
    parts.append(TEMPLATE_INTRO)
    parts.append(_template())
    return "\n".join(parts)


def _state_lines(category: ResolvedCategory) -> list[str]:
    if category.mode == "allowed":
        return [_one_paragraph(category.allowed_text)]
    if category.mode == "sensitive":
        return [_one_paragraph(category.sensitive_text)]
    return [
        "Should not:",
        *(f"- {bullet.strip()}" for bullet in category.should_not),
        "Can:",
        *(f"- {bullet.strip()}" for bullet in category.can),
    ]


def _one_paragraph(text: str) -> str:
    # YAML block scalars keep line breaks and a trailing newline; the trained texts are one
    # paragraph, and a stray newline must not change the version.
    return " ".join(text.split())


def _template() -> str:
    def choices(values: tuple[str, ...]) -> str:
        return " | ".join(f'"{value}"' for value in values)

    return "\n".join(
        (
            "{",
            f'    "rating": {choices(("Safe", "Unsafe"))},',
            f'    "category": {choices(CATEGORIES)},',
            '    "rationale": "<what the image shows and why it earns the rating>"',
            "}",
        )
    )
