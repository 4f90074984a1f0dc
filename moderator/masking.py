"""Hiding secrets in text meant for people (error lines, logs, verdict messages): the password
of every URL, `scheme://user:password@host` or a scheme-less `user:password@host`, and the
value of every secret query parameter (`?password=...`, `&sslpassword=...`, any case) become
`***`, as SQLAlchemy renders hidden passwords. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
# Userinfo runs to the last "@" of its token (a password may hold unescaped "@" or "/", a user
# name after a scheme an "@": `user@server:password@host`); tokens end at whitespace and quotes.
# Without a scheme, the token must start the text or follow a space, quote or bracket, so that
# `file.yaml:3: ...` lines are left alone.
_WITH_SCHEME = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>/:]*):[^\s'\"<>]*@")
_WITHOUT_SCHEME = re.compile(r"(?P<head>(?:^|(?<=[\s'\"(<\[=,]))[^\s'\"<>@/:]+):(?!//)[^\s'\"<>]*@")
# `key=value` after "?" or "&" (a URL's query), or after whitespace (a libpq conninfo string).
# The value runs to the next "&" or whitespace ("#" and ";" included: drivers pass them on), a
# closing ":", ",", "." or ")" left out (`audit store URL: ...`). The key may be %-encoded.
_PARAMETER = re.compile(
    r"(?P<head>(?:^|(?<=[?&\s'\"(\[,]))(?P<key>[A-Za-z0-9_.%\-]+)=)"
    r"(?P<value>[^\s'\"<>&]*?)(?=[:,.)]?(?:[\s'\"<>&]|$))"
)
# Parameter names that carry a secret, compared decoded and in lower case.
SECRET_KEYS = frozenset({"password", "sslpassword", "passwd", "pwd"})


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it, and the value of every secret query
    parameter, replaced by `***` (user names and the other parameters kept)."""
    masked = _WITH_SCHEME.sub(rf"\g<head>:{MASK}@", text)
    masked = _WITHOUT_SCHEME.sub(rf"\g<head>:{MASK}@", masked)
    return _PARAMETER.sub(_mask_parameter, masked)


def _mask_parameter(match: re.Match[str]) -> str:
    if unquote(match["key"]).lower() not in SECRET_KEYS or not match["value"]:
        return match[0]
    return match["head"] + MASK


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """`text` with every known secret value in it replaced by `***`, where it stands alone (not
    inside a longer word, so that a short password leaves ordinary words alone)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        alone = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
        text = re.sub(alone, lambda _: MASK, text)
    return text


# A credential a server may echo back from a request's headers or query: `Basic ...`,
# `Bearer ...`, `token: ...`, `api-key=...` followed by a token-like value.
_CREDENTIAL = re.compile(r"(?i)\b(basic|bearer|token|api[-_]?key)([\s:=]+)[A-Za-z0-9+/=._~-]{6,}")


def mask_credentials(text: str) -> str:
    """`text` with every credential-looking value (`Bearer abc...`, `api-key=...`) replaced by
    `***`, the word before it kept."""
    return _CREDENTIAL.sub(rf"\1\2{MASK}", text)


def has_userinfo(url: str) -> bool:
    """Whether `url` may carry a user name or password (`scheme://user[:password]@host`). An
    `@` anywhere before the query counts: a secret key with a `/` in it (`AK:S/K@host`) would
    otherwise end the authority early and pass as a path."""
    _, sep, rest = url.partition("://")
    before_query = re.split(r"[?#]", rest if sep else url, maxsplit=1)[0]
    return "@" in before_query
