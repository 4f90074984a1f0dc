"""Lenient JSON for model text: find candidate objects in prose, decode them, read cut-off ones.

This module knows JSON syntax only, not what a verdict is. A value may itself contain braces and
quotes, so the text is never cut at the first `}`: every `{` (up to `MAX_STARTS` of them) starts
a string-aware scan for its balanced closing brace (`candidates`), and each balanced candidate is
decoded by `load_object`. Trailing commas are dropped and single-quoted (Python dict style)
strings and `True`/`False`/`None` are rewritten as JSON by a string-aware pass of our own (no
`eval`, no `ast`, nothing executes). A `{` whose object the text ends before closing is read
as a prefix by `read_cut`: its complete pairs, and the key and partial string it stopped in.

Objects keep their key/value pairs in order, so a repeated key stays visible to the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_STARTS = 32  # candidate `{` positions tried; bounds the work on pathological text
_WS = re.compile(r"\s*")
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)
_TRAILING_COMMA = re.compile(r'"(?:[^"\\]|\\.)*"|,(\s*[}\]])', re.DOTALL)
_PY_CONSTANTS = re.compile(r"\b(True|False|None)\b")
_PY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)

Pairs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class JsonObject:
    """A decoded JSON object as its key/value pairs in order, so repeated keys stay visible."""

    pairs: Pairs


@dataclass(frozen=True)
class Cut:
    """A JSON object cut off by the end of the text: its complete pairs and the value it was in.

    `key` is the key whose value was being generated (None when the cut fell between values or
    inside a key); `partial` is that value's text so far when it was a string, else None.
    """

    pairs: Pairs
    key: str | None
    partial: str | None


# --- finding and decoding candidates -------------------------------------------------------------


def candidates(text: str) -> Iterator[tuple[int, int | None]]:
    """(start, end) of the object each `{` opens, in text order, for at most `MAX_STARTS` of
    them; end is None when the text ends before the object closes."""
    start = text.find("{")
    for _ in range(MAX_STARTS):
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


def load_object(candidate: str) -> JsonObject | None:
    """Decode a balanced candidate as a JSON object, tolerating trailing commas and '-quotes;
    None when it does not decode, or decodes to something other than an object."""
    attempts = [candidate, _drop_trailing_commas(candidate)]
    converted = _python_to_json(candidate)
    if converted is not None:
        attempts += [converted, _drop_trailing_commas(converted)]
    for attempt in attempts:
        try:
            value = json.loads(attempt, strict=False, object_pairs_hook=_as_object)
        except (ValueError, RecursionError):
            continue
        return value if isinstance(value, JsonObject) else None
    return None


def _as_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    return JsonObject(tuple(pairs))


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


def read_cut(text: str, start: int) -> Cut | None:
    """Read text[start:] as a JSON object cut by the end of the text; None if it is not a
    prefix of one (or if it closes after all)."""
    pairs: list[tuple[str, Any]] = []
    pos = start + 1
    while True:
        pos = _skip(text, pos)
        if pos == len(text):
            return Cut(tuple(pairs), None, None)
        if pairs:
            if text[pos] != ",":
                return None
            pos = _skip(text, pos + 1)
            if pos == len(text):
                return Cut(tuple(pairs), None, None)
        if text[pos] != '"':
            return None
        key, pos, complete = _string(text, pos)
        if key is None:
            return None
        if not complete:
            return Cut(tuple(pairs), None, None)
        pos = _skip(text, pos)
        if pos == len(text):
            return Cut(tuple(pairs), key, "")
        if text[pos] != ":":
            return None
        pos = _skip(text, pos + 1)
        if pos == len(text):
            return Cut(tuple(pairs), key, "")
        value: Any
        if text[pos] == '"':
            value, pos, complete = _string(text, pos)
            if value is None:
                return None
            if not complete:
                return Cut(tuple(pairs), key, value)
        else:
            try:
                value, pos = json.JSONDecoder(strict=False).raw_decode(text, pos)
            except (ValueError, RecursionError):
                return Cut(tuple(pairs), key, None)
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
