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
"""

from __future__ import annotations

import re

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


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
