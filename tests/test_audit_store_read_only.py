"""A SQLite audit store whose connections were opened read-only writes again once it can."""

from __future__ import annotations

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
