"""A SQLite audit store whose connections were opened read-only writes again once it can."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditUnavailable
from moderator.audit.models import IncomingRecord
from tests.audit_fixtures import TOPIC, record


def _one(n: int) -> list[IncomingRecord]:
    doc = record(f"ro-{n}", "acme", datetime(2026, 12, 1, tzinfo=UTC))
    return [IncomingRecord(TOPIC, 0, n, doc)]


def test_a_store_opened_read_only_is_opened_again_for_the_next_write(tmp_path: Path) -> None:
    """SQLite falls back to a read-only connection when it cannot write the file (a folder
    mounted read-only) and keeps it. `query_only` makes every connection opened meanwhile
    such a connection; once new connections can write, the next write must use one."""
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        store.insert(_one(0))
        engine = store._engine

        def read_only(connection: Any, _record: Any) -> None:
            connection.execute("PRAGMA query_only = ON")

        event.listen(engine, "connect", read_only)
        engine.dispose()  # every connection from here on is read-only
        with pytest.raises(AuditUnavailable, match="readonly database"):
            store.insert(_one(1))
        event.remove(engine, "connect", read_only)  # the folder is writable again
        assert store.insert(_one(1)).inserted == 1
        assert store.count() == 2


def test_a_new_database_and_anchor_file_are_for_their_owner_only(tmp_path: Path) -> None:
    from moderator.audit.integrity.anchors import FileAnchorSink, make_anchor

    old = os.umask(0o022)
    try:
        with AuditStore.open(f"sqlite:///{tmp_path / 'new.db'}") as store:
            store.insert(_one(0))
            assert (tmp_path / "new.db").stat().st_mode & 0o777 == 0o600
            assert (tmp_path / "new.db-wal").stat().st_mode & 0o777 == 0o600
            FileAnchorSink(tmp_path / "anchors.jsonl").write(make_anchor(store))
    finally:
        os.umask(old)
    assert (tmp_path / "anchors.jsonl").stat().st_mode & 0o777 == 0o600
    existing = tmp_path / "kept.db"
    existing.touch(mode=0o640)
    AuditStore.open(f"sqlite:///{existing}").close()
    assert existing.stat().st_mode & 0o777 == 0o640
