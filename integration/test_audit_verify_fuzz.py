"""Generated edits of a small PostgreSQL audit store (the SQLite property of
tests/test_audit_verify_fuzz.py, without the raw-text timestamps PostgreSQL cannot hold)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit_support import database_url
from tests.audit_edits import World, build, check, edits
from tests.fuzz import fuzz_settings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with database_url("postgres", tmp_path_factory.mktemp("pg")) as url:
        store, engine, template, anchor = build(url)
        yield store, engine, template, anchor
        engine.dispose()
        store.close()


@pytest.mark.postgres
@pytest.mark.fuzz
@fuzz_settings(25)
@given(st.data())
def test_every_visible_edit_is_reported_on_postgres(world: World, data: st.DataObject) -> None:
    """Default 25 examples (about 2 s)."""
    store, engine, template, anchor = world
    check(store, engine, template, anchor, *data.draw(edits(template)))
