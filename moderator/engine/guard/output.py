"""Parse a guard model's verdict JSON defensively, and turn it into an engine result.

The models answer `{"rating": ..., "category": ..., "rationale": ...}`, usually alone but
sometimes fenced in markdown, wrapped in prose, with Python-style quotes or a trailing comma, or
cut off when generation hits its token limit. A rationale may itself contain braces and quotes,
so the text is never cut at the first `}`: every `{` (up to `_MAX_STARTS` of them) starts a
string-aware scan for its balanced closing brace, and each balanced candidate is decoded as
JSON. The first decoded object that has a rating key is the verdict.

Leniency, and where it stops:

- keys match after trimming and case-folding; unknown extra keys are ignored; a repeated
  rating/category/rationale key is an error (two answers in one object);
- the rating matches case-insensitively ("unsafe" → "Unsafe"); anything else is an error;
- the category matches one of `categories` exactly after whitespace normalisation and
  case-folding, or by its code alone ("O4", "NA") when exactly one category has that code;
  anything else, such as "O10: Spam" or "O4: Nudity", is an unknown category. Guessing from a
  paraphrased name would put words in the model's mouth;
- a missing rationale is an empty string; a non-string rating, category or rationale is an error;
- trailing commas are dropped and single-quoted (Python dict style) strings are rewritten as JSON
  strings by a string-aware pass of our own (no `eval`, no `ast`, nothing executes);
- truncation: when no balanced object has a rating, the first unclosed `{` is read as a cut-off
  JSON object. If the rating and category values are both complete strings, the verdict stands
  (those two fields decide; a sentence that was cut does not change them) and the rationale is
  the partial text with " [truncated]" appended (or just "[truncated]" when it had not started;
  a rationale that was complete keeps no marker). Otherwise the error is "truncated".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from moderator.engine.base import EngineResult
from moderator.errors import ErrorCode, ProcessingError
from moderator.events.verdict import CATEGORIES, Assessment, Rating, category_code

TRUNCATED_MARKER = "[truncated]"
FIELDS = ("rating", "category", "rationale")
_MAX_STARTS = 32  # candidate `{` positions tried; bounds the work on pathological text
_RATINGS: dict[str, Rating] = {"safe": "Safe", "unsafe": "Unsafe"}
_WS = re.compile(r"\s*")
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)
_TRAILING_COMMA = re.compile(r'"(?:[^"\\]|\\.)*"|,(\s*[}\]])', re.DOTALL)
_PY_CONSTANTS = re.compile(r"\b(True|False|None)\b")
_PY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
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


@dataclass(frozen=True)
class _Object:
    """A decoded JSON object as its key/value pairs in order, so repeated keys stay visible."""

    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Cut:
    """A JSON object cut off by the end of the text: its complete pairs and the value it was in.

    `key` is the key whose value was being generated (None when the cut fell between values or
    inside a key); `partial` is that value's text so far when it was a string, else None.
    """

    pairs: tuple[tuple[str, Any], ...]
    key: str | None
    partial: str | None


def parse_output(text: str, categories: Sequence[str] = CATEGORIES) -> ParsedOutput:
    """Find and validate the verdict in `text`; raise UnparseableOutput saying why not."""
    if not text.strip():
        raise UnparseableOutput("empty output")
    saw_object = False
    unclosed: list[int] = []
    for start, end in _candidates(text):
        if end is None:
            unclosed.append(start)
            continue
        obj = _load(text[start:end])
        if obj is None:
            continue
        saw_object = True
        if _has_rating(obj.pairs):
            return _verdict(_fields(obj.pairs), categories)
    saw_prefix = False
    for start in unclosed:
        cut = _read_cut(text, start)
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


# --- finding and decoding candidates -------------------------------------------------------------


def _candidates(text: str) -> Iterator[tuple[int, int | None]]:
    """(start, end) of the object each `{` opens; end is None when the text ends first."""
    start = text.find("{")
    for _ in range(_MAX_STARTS):
        if start < 0:
            return
        yield start, _close(text, start)
        start = text.find("{", start + 1)


def _close(text: str, start: int) -> int | None:
    """Index just past the brace closing the one at `start`. Quotes of either kind open a
    string (JSON, or Python-literal style) in which braces do not count; backslash escapes."""
    depth = 0
    quote = ""
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _load(candidate: str) -> _Object | None:
    """Decode a balanced candidate as a JSON object, tolerating trailing commas and '-quotes."""
    attempts = [candidate, _drop_trailing_commas(candidate)]
    converted = _python_to_json(candidate)
    if converted is not None:
        attempts += [converted, _drop_trailing_commas(converted)]
    for attempt in attempts:
        try:
            value = json.loads(attempt, strict=False, object_pairs_hook=_as_object)
        except (ValueError, RecursionError):
            continue
        return value if isinstance(value, _Object) else None
    return None


def _as_object(pairs: list[tuple[str, Any]]) -> _Object:
    return _Object(tuple(pairs))


def _drop_trailing_commas(candidate: str) -> str:
    return _TRAILING_COMMA.sub(lambda m: m.group(1) if m.group(1) is not None else m[0], candidate)


def _python_to_json(candidate: str) -> str | None:
    """Rewrite single-quoted strings (and True/False/None) as JSON; None if there are none."""
    if "'" not in candidate:
        return None
    out: list[str] = []
    i = 0
    while i < len(candidate):
        quote = candidate[i]
        if quote not in "\"'":
            nxt = min((p for p in (candidate.find(q, i) for q in "\"'") if p >= 0), default=-1)
            chunk = candidate[i:] if nxt < 0 else candidate[i:nxt]
            out.append(_PY_CONSTANTS.sub(_py_constant, chunk))
            i += len(chunk)
            continue
        end = _string_end(candidate, i)
        if end is None:
            return None
        body = candidate[i + 1 : end - 1]
        out.append(
            candidate[i:end] if quote == '"' else json.dumps(_PY_ESCAPE.sub(_unescape, body))
        )
        i = end
    return "".join(out)


def _py_constant(match: re.Match[str]) -> str:
    return {"True": "true", "False": "false", "None": "null"}[match[1]]


def _unescape(match: re.Match[str]) -> str:
    return {"n": "\n", "t": "\t", "r": "\r"}.get(match[1], match[1])


def _string_end(text: str, start: int) -> int | None:
    """Index just past the quote closing the string that opens at `start`."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return None


# --- reading a cut-off object --------------------------------------------------------------------


def _read_cut(text: str, start: int) -> _Cut | None:
    """Read text[start:] as a JSON object cut by the end of the text; None if it is not a
    prefix of one (or if it closes after all)."""
    pairs: list[tuple[str, Any]] = []
    pos = start + 1
    while True:
        pos = _skip(text, pos)
        if pos == len(text):
            return _Cut(tuple(pairs), None, None)
        if pairs:
            if text[pos] != ",":
                return None
            pos = _skip(text, pos + 1)
            if pos == len(text):
                return _Cut(tuple(pairs), None, None)
        if text[pos] != '"':
            return None
        key, pos, complete = _string(text, pos)
        if key is None:
            return None
        if not complete:
            return _Cut(tuple(pairs), None, None)
        pos = _skip(text, pos)
        if pos == len(text):
            return _Cut(tuple(pairs), key, "")
        if text[pos] != ":":
            return None
        pos = _skip(text, pos + 1)
        if pos == len(text):
            return _Cut(tuple(pairs), key, "")
        value: Any
        if text[pos] == '"':
            value, pos, complete = _string(text, pos)
            if value is None:
                return None
            if not complete:
                return _Cut(tuple(pairs), key, value)
        else:
            try:
                value, pos = json.JSONDecoder(strict=False).raw_decode(text, pos)
            except (ValueError, RecursionError):
                return _Cut(tuple(pairs), key, None)
        pairs.append((key, value))


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _string(text: str, pos: int) -> tuple[str | None, int, bool]:
    """Decode the JSON string opening at `pos`: (value, end, complete). A string the text cuts
    off yields its decodable prefix; a malformed escape yields None."""
    body_end = _STRING_BODY.match(text, pos + 1)
    end = body_end.end() if body_end else pos + 1
    if end < len(text) and text[end] == '"':
        return _decode(text[pos + 1 : end]), end + 1, True
    body = text[pos + 1 :]
    for trim in range(7):  # an escape such as \u00e9 may itself be cut: drop its start
        value = _decode(body[: len(body) - trim])
        if value is not None:
            if value and "\ud800" <= value[-1] <= "\udbff":  # a pair's first half; second cut
                value = value[:-1]
            return value, len(text), False
    return None, len(text), False


def _decode(body: str) -> str | None:
    try:
        value = json.loads(f'"{body}"', strict=False)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


# --- validating fields ---------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.strip().casefold()


def _has_rating(pairs: tuple[tuple[str, Any], ...]) -> bool:
    return any(_key(k) == "rating" for k, _ in pairs)


def _fields(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
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


def _truncated_verdict(cut: _Cut, categories: Sequence[str]) -> ParsedOutput:
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
