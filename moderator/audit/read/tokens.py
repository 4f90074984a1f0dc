"""Bearer tokens of the audit API: how `audit.api_tokens` keys are made from them, and keys that
are known mistakes rather than hashes of a token. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MIN_TOKEN_CHARS = 32
"""Below this `audit hash-token` warns: a short token can be guessed."""
MAX_TOKEN_CHARS = 4096
"""Above this it is no token (servers refuse request headers of a few KiB more)."""


def token_hash(token: str) -> str:
    """What audit.api_tokens is keyed by: the SHA-256 hex of the token's UTF-8 bytes, as
    `printf %s "$TOKEN" | sha256sum` prints it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# Hashes of what a shell pipes into sha256sum when the command that should hash a token goes
# wrong: an unset variable, a printf format string taken literally (`%s`, or `%%s` copied from a
# help text that argparse did not unescape), a variable's name in single quotes (`'$TOKEN'`, or
# the placeholder `TOKEN` of a recipe), or echo's trailing newline after any of them. Each one
# is either a token anyone can send (`Authorization: Bearer %s`) or one nobody can.
_MISTAKES = (
    ("", "an empty string"),
    ("%s", 'the text "%s"'),
    ("%%s", 'the text "%%s"'),
    ("$TOKEN", 'the text "$TOKEN" (a variable that was not expanded)'),
    ("${TOKEN}", 'the text "${TOKEN}" (a variable that was not expanded)'),
    ("TOKEN", 'the text "TOKEN" (a placeholder)'),
)
KNOWN_MISTAKES: dict[str, str] = {
    token_hash(text + end): what if not end else what.replace("the text", "the line")
    for text, what in _MISTAKES
    for end in ("", "\n")
}
KNOWN_MISTAKES[token_hash("\n")] = "an empty line"


def mistaken_hash(digests: Iterable[str]) -> str | None:
    """One line naming the first configured hash that is a known mistake, or None."""
    for digest in digests:
        what = KNOWN_MISTAKES.get(digest.strip().lower())
        if what is not None:
            return (
                f"audit.api_tokens: {digest[:12]}... is the SHA-256 of {what}, not of a token "
                "(anyone could send it, or nobody); hash the real token with: "
                "moderator audit hash-token"
            )
    return None


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a bearer token (an HTTP header value), or None."""
    if not token:
        return "the token is empty"
    if token != token.strip():
        return "the token starts or ends with white space, which a request header cannot carry"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in token):
        return "the token contains a control character (a line break?)"
    if not token.isascii():
        return "the token has characters outside ASCII, which clients encode differently"
    return None
