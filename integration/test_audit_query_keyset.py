"""Keyset pages by (decided_at, event_id) and hostile query values, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from audit_support import BACKENDS, BASE_TIME, incoming, make_record, opened
from moderator.audit.db.store import AuditStore
from moderator.audit.errors import InvalidQuery
from moderator.audit.read.filters import build_query


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    with opened(request.param, tmp_path) as (opened_store, _raw):
        yield opened_store


def walk(store: AuditStore, sort: str, limit: int) -> list[str]:
    query = build_query({}, sort=sort, limit=limit)
    seen: list[str] = []
    while True:
        page = store.query(query)
        seen += [row.event_id for row in page.rows]
        if page.next_cursor is None:
            return seen
        query = replace(query, cursor=page.next_cursor)


def test_rows_with_one_time_are_paged_by_event_id_once_each(store: AuditStore) -> None:
    # Mixed case, digits and punctuation: the database's collation orders them, and the pages
    # must agree with that order whatever it is.
    names = ["b-2", "B-1", "a_3", "a-3", "Z9", "z.0", "m:5", "0-x", "A-1", "b-10"]
    records = [make_record(n, decided_at=BASE_TIME) for n in range(len(names))]
    for record, name in zip(records, names, strict=True):
        record["verdict"]["event_id"] = name
    store.insert(incoming(records))
    for sort in ("decided_at", "-decided_at"):
        everything = walk(store, sort, 1000)
        assert sorted(everything) == sorted(names)
        for limit in (1, 3, 4):
            assert walk(store, sort, limit) == everything, (sort, limit)
    assert walk(store, "-decided_at", 1000) == walk(store, "decided_at", 1000)[::-1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("object_key", "a\x00b"),
        ("model", "fake:\x00"),
        ("since", "9999-12-31T23:59:59-23:59"),
        ("until", "0001-01-01T00:00:00+00:01"),
    ],
)
def test_values_no_database_could_compare_are_refused_before_the_query(
    store: AuditStore, field: str, value: str
) -> None:
    store.insert(incoming([make_record(0)]))
    with pytest.raises(InvalidQuery, match=f"^{field}: "):
        build_query({field: value})
    assert len(store.query(build_query({"since": "1000-01-01"})).rows) == 1
