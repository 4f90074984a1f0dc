"""Generated edits of a small SQLite audit store written through the real store code: `verify`
reports tampering whenever a user would see a change (tests/audit_edits.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.audit_edits import World, build, check, edits
from tests.fuzz import fuzz_settings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path: Path = tmp_path_factory.mktemp("verify-fuzz") / "audit.db"
    store, engine, template, anchor = build(f"sqlite:///{path}")
    yield store, engine, template, anchor
    engine.dispose()
    store.close()


@pytest.mark.fuzz
@fuzz_settings(100)
@given(st.data())
def test_every_visible_edit_is_reported(world: World, data: st.DataObject) -> None:
    """Default 100 examples (about 4 s): 1-3 edits of columns, records (values, members, text),
    hand redactions, deleted rows, policy documents and raw timestamps, then no rehash, the
    edited rows' hashes recomputed, or whole chains recomputed with their heads."""
    store, engine, template, anchor = world
    check(store, engine, template, anchor, *data.draw(edits(template)))
