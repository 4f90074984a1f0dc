"""RFC 8785 (JSON Canonicalization Scheme) encoding, fast enough for the audit sink. Pure.

The rules, and how this module meets them with the standard library's C string encoder:

- strings: only `"`, `\\` and control characters below U+0020 are escaped (`\\b \\t \\n \\f \\r`,
  others as lowercase `\\u00xx`); everything else is written as UTF-8, U+2028 and DEL included.
  `json.encoder.encode_basestring` does exactly this. Lone surrogates cannot be encoded: error.
- numbers: integers within +-(2**53 - 1) as they are; finite floats in ECMAScript's
  Number.prototype.toString form (shortest round-trip digits, which Python's `repr` also yields,
  then ES6's choice of plain or exponent notation: plain for 1e-7 <= |x| < 1e21). NaN and
  infinities: error.
- objects: members sorted by the UTF-16 code units of their names, no whitespace.

`tests/test_audit_canonical.py` checks this encoder against the `rfc8785` package byte for byte
on generated documents.
"""

from __future__ import annotations

import math
from json.encoder import encode_basestring  # C-accelerated
from typing import Any

MAX_SAFE_INT = 2**53 - 1


class CanonicalizationError(ValueError):
    """The value cannot be written as RFC 8785 JSON."""


class Raw:
    """A value already encoded by `dumps` (UTF-8 bytes), written as it is.

    Lets a caller splice in a large member it has canonicalised before (the policy document
    that most audit records share) instead of encoding it again.
    """

    __slots__ = ("text",)

    def __init__(self, encoded: bytes) -> None:
        self.text = encoded.decode("utf-8")


def dumps(obj: Any) -> bytes:
    """RFC 8785 bytes of `obj` (dicts with str keys, lists/tuples, str, int, float, bool, None)."""
    parts: list[str] = []
    _write(obj, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("string holds a lone surrogate") from exc


def number(value: float) -> str:
    """ECMAScript Number.prototype.toString of a finite float."""
    if not math.isfinite(value):
        raise CanonicalizationError(f"{value!r} is not a JSON number")
    if value == 0:
        return "0"
    digits, exponent = _digits(value)
    sign = "-" if value < 0 else ""
    k = len(digits)
    n = exponent + k  # the decimal point sits after n digits
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"


def _digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |value| and the exponent of their last digit."""
    text = repr(abs(value))
    mantissa, _, exp = text.partition("e")
    exponent = int(exp) if exp else 0
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    digits = (whole + fraction).lstrip("0")
    exponent -= len(fraction)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    return stripped, exponent


def _write(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(encode_basestring(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INT:
            raise CanonicalizationError(f"integer {obj} is outside the I-JSON range")
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(number(obj))
    elif isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise CanonicalizationError("object keys must be strings")
        out.append("{")
        first = True
        for key in sorted(obj, key=_utf16):
            if not first:
                out.append(",")
            first = False
            out.append(encode_basestring(key))
            out.append(":")
            _write(obj[key], out)
        out.append("}")
    elif isinstance(obj, Raw):
        out.append(obj.text)
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(obj).__name__} is not a JSON type")


def _utf16(key: str) -> bytes:
    return key.encode("utf-16be", "surrogatepass")
