"""Hiding secrets in text meant for people (error lines, logs, verdict messages): the password
of every URL, `scheme://user:password@host` or a scheme-less `user:password@host`, becomes
`***`, as SQLAlchemy renders hidden passwords. Pure."""

from __future__ import annotations

import re

MASK = "***"
# Userinfo runs to the last "@" of its token (a password may hold unescaped "@" or "/"); tokens
# end at whitespace and quotes. Without a scheme, the token must start the text or follow a
# space, quote or bracket, so that `file.yaml:3: ...` lines are left alone.
_WITH_SCHEME = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>@/:]*):[^\s'\"<>]*@")
_WITHOUT_SCHEME = re.compile(r"(?P<head>(?:^|(?<=[\s'\"(<\[=,]))[^\s'\"<>@/:]+):(?!//)[^\s'\"<>]*@")


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (user names kept)."""
    masked = _WITH_SCHEME.sub(rf"\g<head>:{MASK}@", text)
    return _WITHOUT_SCHEME.sub(rf"\g<head>:{MASK}@", masked)


def has_userinfo(url: str) -> bool:
    """Whether `url` carries a user name or password (`scheme://user[:password]@host`)."""
    _, sep, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest if sep else url, maxsplit=1)[0]
    return "@" in authority
