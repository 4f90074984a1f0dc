"""The audit API reads and writes at most PAGES_AT_ONCE pages of verdicts at a time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditQuery, Page
from moderator.audit.read.api import PAGES_AT_ONCE, create_app
from moderator.audit.read.tokens import token_hash
from tests.audit_fixtures import fill


class CountingStore:
    """A test double around the real store: its queries take 0.1 s and are counted while
    they run."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def query(self, q: AuditQuery) -> Page:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.1)
            return self._store.query(q)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingStore]:
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        fill(opened)
        yield CountingStore(opened)


def test_many_clients_asking_for_pages_wait_their_turn(counting: CountingStore) -> None:
    app = create_app(lambda: counting, {token_hash("t"): ["*"]})  # type: ignore[arg-type,return-value]

    async def ask_many() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            headers = {"Authorization": "Bearer t"}
            answers = await asyncio.gather(
                *(client.get("/v1/verdicts", headers=headers) for _ in range(12))
            )
        return [a.status_code for a in answers]

    assert asyncio.run(ask_many()) == [200] * 12
    assert counting.most == PAGES_AT_ONCE
