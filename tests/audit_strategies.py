"""Hypothesis strategies for audit query values as an attacker or a careless operator types them:
any text (lone surrogates and NUL included), times at and beyond the ends of the calendar,
numbers of any size, and cursors forged as base64 of arbitrary JSON. Shared by the generated-input
tests of `audit query` and of the HTTP API."""

from __future__ import annotations

import base64
import json
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from moderator.audit.models import AuditQuery
from moderator.audit.read.cursor import filters_digest
from moderator.audit.read.filters import CATEGORY_CODES, DECISIONS, ERROR_CODES, SORTS, SOURCES

# Any code point, surrogates too (argv decoded with surrogateescape carries them).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
texts = st.one_of(
    st.text(max_size=40),
    any_text,
    st.sampled_from(["", " ", "\x00", "null", "-", "%s", "a" * 2000, "\udcff", "🙂"]),
)

offsets = st.one_of(
    st.none(),
    st.sampled_from([UTC, timezone(timedelta(hours=23, minutes=59))]),
    st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
    ).map(lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))),
    st.just(timezone(-timedelta(hours=23, minutes=59))),
)
edge_times = st.sampled_from(
    [
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31",
        "0001-01-01T00:00:00+23:59",
        "0001-01-01",
        "0999-12-31T23:59:59Z",
        "1000-01-01",
        "2026-11-29T02:00:00",
        "2026-02-30",
        "2026-11-29T24:00:00Z",
        "+2026-11-29",
        "20261129T020000Z",
    ]
)
times = st.one_of(
    edge_times,
    st.builds(lambda at, tz: at.replace(tzinfo=tz).isoformat(), st.datetimes(), offsets),
    st.dates().map(lambda d: d.isoformat()),
    texts,
)

limits = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.integers(min_value=0, max_value=1001).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1e308", "Infinity", "NaN", "-0", "0x10", "\uff11\uff10", " 5 ", "9" * 400]),
    texts,
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
    times,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def _b64(doc: Any) -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).decode()


cursor_docs = st.fixed_dictionaries(
    {},
    optional={
        "s": st.one_of(st.sampled_from(SORTS), json_values),
        "t": st.one_of(times, json_values),
        "e": st.one_of(st.sampled_from(["a-1", "b-0", "zzz"]), json_values),
        "i": st.one_of(st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400]), json_values),
        "f": st.one_of(st.just(filters_digest(AuditQuery())), json_values),
    },
)
cursors = st.one_of(
    cursor_docs.map(_b64),
    json_values.map(_b64),
    st.sampled_from(
        [
            b'{"s":"-decided_at","t":"2026-11-29T02:03:00Z","e":NaN}',
            b'{"s":"-decided_at","t":"2026-11-29T02:03:00Z","i":Infinity}',
            b'{"s":"-decided_at","t":"2026-11-29T02:03:00Z","e":1e400}',
            b"[" * 3000 + b"]" * 3000,
            b"\xff\xfe",
        ]
    ).map(_b64),
    texts,
)

sorts = st.one_of(st.sampled_from(SORTS), texts)
decisions = st.one_of(st.sampled_from(DECISIONS), texts)
categories = st.one_of(
    st.sampled_from([*CATEGORY_CODES, "o4", "O4: Nudity Content", "O4: \x00"]), texts
)
hexes = st.one_of(st.text("0123456789abcdefABCDEF", min_size=14, max_size=66), texts)
tenants = st.one_of(st.sampled_from(["alpha", "beta", "gamma", "*"]), texts)
models = st.one_of(
    st.sampled_from(["fake", "FAKE", "fake:org/fake-guard", "nudnet", ":x", "x:"]), texts
)
error_codes = st.one_of(st.sampled_from([*ERROR_CODES, "CORRUPT_IMAGE", "malformed_event"]), texts)
sources = st.one_of(st.sampled_from([*SOURCES, "Model"]), texts)
surfaces = st.one_of(st.sampled_from(["post", "avatar"]), texts)
