"""Text from uploads made safe for one terminal line. Pure.

Object keys, bucket names, surfaces, event ids, error messages and rationales come from the
uploader (or from a model that looked at the upload). Printed raw, an ESC starts a terminal
escape sequence (colours, cursor moves, a cleared line), a CR or LF starts a new line that can
forge another step or table row, and a bidi override (U+202E) shows text in another order than
it is stored. `safe_line` shows each such character as a visible escape instead: `\\x1b`,
`\\r`, `\\n`, `\\t`, `\\x00`, `\\x9b`, `\\u2028`, `\\u202e`. Everything else is kept as it is,
letters of any script included. The result holds no character it would escape, so applying it
twice changes nothing; a backslash already in the text is kept, so JSON output is the place to
read a value exactly.

`json_text` is that exact JSON, with the same characters written as `\\uXXXX` escapes, which
decode to the same value. `csv_cell` is one CSV cell: text as `safe_line` shows it, and never
the start of a spreadsheet formula.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls and DEL, C1 controls (NEL and the 8-bit CSI among them), the Arabic letter mark,
# the left-to-right and right-to-left marks, the line and paragraph separators, the bidi
# embeddings, overrides and isolates, and lone surrogates (no terminal encoding takes them).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def safe_line(text: str) -> str:
    """`text` with every control, line-breaking or bidi-formatting character shown as an escape
    (`\\x1b`, `\\r`, `\\u202e`); other characters, non-ASCII letters included, kept."""
    return _UNSAFE.sub(_escape, text)


def first_unsafe(text: str, allowed: str = "") -> str | None:
    """The first character of `text` that `safe_line` would escape and `allowed` does not hold,
    as that escape (`\\x1b`, `\\u202e`); None when there is none."""
    for match in _UNSAFE.finditer(text):
        if match.group() not in allowed:
            return _escape(match)
    return None


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# What `json.dumps(..., ensure_ascii=False)` leaves raw although it breaks a line for a
# line-oriented reader (NEL, U+2028, U+2029) or is acted on by a terminal (DEL, the C1 controls,
# the bidi marks, embeddings, overrides and isolates), and lone surrogates, which no UTF-8
# stream can carry. JSON escapes the C0 controls itself; they are left out here because the
# LF and spaces of `indent` are JSON syntax, not text.
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def json_text(value: Any, **options: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **options)` with every character `safe_line` escapes
    and JSON leaves raw written as a `\\uXXXX` escape: `json.loads` gives the same value back,
    and other non-ASCII text (`é`, `日本`, emoji) stays as it is."""
    text = json.dumps(value, ensure_ascii=False, **options)
    if text.isascii() and "\x7f" not in text:
        return text  # the usual case, and a check that costs next to nothing
    # JSON's own syntax is ASCII, so each such character stands inside a string, where the
    # escape means the same character.
    return _JSON_RAW.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


# The characters that make a spreadsheet read a cell as a formula (`=HYPERLINK(...)`, `+1+1`,
# `-2+3`, `@SUM(...)`). TAB and CR, the other two commonly listed, cannot start a cell that
# `safe_line` has seen: they are `\t` and `\r` by then.
_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""What a spreadsheet may run as a formula at a cell's start, after any white space: the ASCII
signs and their full-width forms (some spreadsheets read those as the ASCII ones)."""


def csv_cell(value: Any) -> str:
    """One CSV cell: "" for None, `true`/`false`, a number as Python writes it (a negative score
    or offset stays a number), and any text as `safe_line` shows it, behind a `'` when it would
    start with `=`, `+`, `-` or `@`, after white space or in full width (the usual guard
    against formula injection)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return csv_text(str(value))


def csv_text(text: str) -> str:
    """`text` as `safe_line` shows it, with a leading `'` when it would start a formula."""
    shown = safe_line(text)
    return "'" + shown if shown.lstrip().startswith(_FORMULA_START) else shown
