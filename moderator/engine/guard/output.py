"""Map a guard model's verdict JSON to a validated verdict, and that to an engine result.

The models answer `{"rating": ..., "category": ..., "rationale": ...}`, usually alone but
sometimes fenced in markdown, wrapped in prose, with Python-style quotes or a trailing comma, or
cut off when generation hits its token limit. `moderator.engine.guard.repair` finds and decodes
the candidate objects in the text; the first decoded object that has a rating key is the verdict.

Leniency, and where it stops:

- keys match after trimming and case-folding; unknown extra keys are ignored; a repeated
  rating/category/rationale key is an error (two answers in one object);
- the rating matches case-insensitively ("unsafe" → "Unsafe"); anything else is an error;
- the category matches one of `categories` exactly after whitespace normalisation and
  case-folding, or by its code alone ("O4", "NA") when exactly one category has that code;
  anything else, such as "O10: Spam" or "O4: Nudity", is an unknown category. Guessing from a
  paraphrased name would put words in the model's mouth;
- a missing rationale is an empty string; a non-string rating, category or rationale is an error;
- trailing commas and single-quoted (Python dict style) strings are repaired (see `repair`);
- truncation: when no balanced object has a rating, the first unclosed `{` is read as a cut-off
  JSON object. If the rating and category values are both complete strings, the verdict stands
  (those two fields decide; a sentence that was cut does not change them) and the rationale is
  the partial text with " [truncated]" appended (or just "[truncated]" when it had not started;
  a rationale that was complete keeps no marker). Otherwise the error is "truncated".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moderator.engine.base import EngineResult
from moderator.engine.guard.repair import Cut, Pairs, candidates, load_object, read_cut
from moderator.errors import ErrorCode, ProcessingError
from moderator.events.verdict import CATEGORIES, Assessment, Rating, category_code

TRUNCATED_MARKER = "[truncated]"
FIELDS = ("rating", "category", "rationale")
_RATINGS: dict[str, Rating] = {"safe": "Safe", "unsafe": "Unsafe"}
_COLON = re.compile(r"\s*:\s*")


@dataclass(frozen=True)
class ParsedOutput:
    rating: Rating
    category: str
    rationale: str


class UnparseableOutput(ProcessingError):
    """The model's text holds no usable verdict; the message names the reason briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.UNPARSEABLE_OUTPUT, reason)


def parse_output(text: str, categories: Sequence[str] = CATEGORIES) -> ParsedOutput:
    """Find and validate the verdict in `text`; raise UnparseableOutput saying why not."""
    if not text.strip():
        raise UnparseableOutput("empty output")
    saw_object = False
    unclosed: list[int] = []
    for start, end in candidates(text):
        if end is None:
            unclosed.append(start)
            continue
        obj = load_object(text[start:end])
        if obj is None:
            continue
        saw_object = True
        if _has_rating(obj.pairs):
            return _verdict(_fields(obj.pairs), categories)
    saw_prefix = False
    for start in unclosed:
        cut = read_cut(text, start)
        if cut is None:
            continue
        saw_prefix = True
        if _has_rating(cut.pairs) or _key(cut.key or "") == "rating":
            return _truncated_verdict(cut, categories)
    if saw_object:
        raise UnparseableOutput("rating missing")
    raise UnparseableOutput("truncated" if saw_prefix else "no JSON object")


def result_from_output(
    text: str,
    categories: Sequence[str],
    *,
    score: float | None,
    generation: dict[str, Any],
) -> EngineResult:
    """The engine result for one generation: an assessment, or an unparseable_output error.

    The raw text is always kept (it goes into the audit record). A score outside [0, 1] (or NaN)
    is dropped rather than clamped: it signals a bug upstream, not a confidence.
    """
    try:
        parsed = parse_output(text, categories)
    except UnparseableOutput as exc:
        return EngineResult(
            error_code=exc.code, error_message=exc.message, raw_output=text, generation=generation
        )
    kept = score if score is not None and 0.0 <= score <= 1.0 else None
    assessment = Assessment(
        rating=parsed.rating, category=parsed.category, rationale=parsed.rationale, score=kept
    )
    return EngineResult(assessment=assessment, raw_output=text, generation=generation)


# --- validating fields ---------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.strip().casefold()


def _has_rating(pairs: Pairs) -> bool:
    return any(_key(k) == "rating" for k, _ in pairs)


def _fields(pairs: Pairs) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in pairs:
        key = _key(name)
        if key in FIELDS:
            if key in fields:
                raise UnparseableOutput(f"duplicate key {key!r}")
            fields[key] = value
    return fields


def _verdict(fields: dict[str, Any], categories: Sequence[str]) -> ParsedOutput:
    rating = _rating(fields)
    category = _category(fields, categories)
    rationale = fields.get("rationale", "")
    if not isinstance(rationale, str):
        raise UnparseableOutput("rationale is not a string")
    return ParsedOutput(rating, category, _encodable(rationale))


def _truncated_verdict(cut: Cut, categories: Sequence[str]) -> ParsedOutput:
    fields = _fields(cut.pairs)
    cut_key = _key(cut.key) if cut.key is not None else None
    if cut_key in fields:
        raise UnparseableOutput(f"duplicate key {cut_key!r}")
    if "rating" not in fields or "category" not in fields:
        raise UnparseableOutput("truncated")
    parsed = _verdict(fields, categories)
    if "rationale" in fields:
        return parsed
    if cut_key == "rationale" and cut.partial is None:
        raise UnparseableOutput("rationale is not a string")
    partial = _encodable(cut.partial or "") if cut_key == "rationale" else ""
    rationale = f"{partial} {TRUNCATED_MARKER}" if partial else TRUNCATED_MARKER
    return ParsedOutput(parsed.rating, parsed.category, rationale)


def _rating(fields: dict[str, Any]) -> Rating:
    if "rating" not in fields:
        raise UnparseableOutput("rating missing")
    value = fields["rating"]
    if not isinstance(value, str):
        raise UnparseableOutput("rating is not a string")
    rating = _RATINGS.get(_key(value))
    if rating is None:
        raise UnparseableOutput(f"invalid rating {_short(value)}")
    return rating


def _category(fields: dict[str, Any], categories: Sequence[str]) -> str:
    if "category" not in fields:
        raise UnparseableOutput("category missing")
    value = fields["category"]
    if not isinstance(value, str):
        raise UnparseableOutput("category is not a string")
    wanted = _normalise(value)
    for category in categories:
        if _normalise(category) == wanted:
            return category
    by_code = [c for c in categories if _normalise(category_code(c)) == wanted]
    if len(by_code) == 1:
        return by_code[0]
    raise UnparseableOutput(f"unknown category {_short(value)}")


def _normalise(category: str) -> str:
    """Collapse whitespace, one space after the code's colon, case-fold."""
    return _COLON.sub(": ", " ".join(category.split()), count=1).casefold()


def _encodable(text: str) -> str:
    """Replace lone surrogates (legal in JSON escapes, not in UTF-8) so the verdict can be sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _short(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")
