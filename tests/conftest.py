from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from moderator.logs import configure_logging
from moderator.settings import LogSettings

if TYPE_CHECKING:
    from moderator.audit.db.store import AuditStore
    from moderator.ingest.memory.broker import MemoryBroker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ instead of comparing with them",
    )


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.fixture
def info_logs() -> Iterator[None]:
    """Lines at `info` reach the processors (and `structlog.testing.capture_logs`)."""
    configure_logging(LogSettings(level="info", format="json"))
    yield
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MODERATOR_* variable, so an error line names only what the test sets."""
    for name in list(os.environ):
        if name.upper().startswith("MODERATOR_"):
            monkeypatch.delenv(name)
    return monkeypatch


# -- the audit sink's tests: what they read from and write to -----------------------------------
# Imported in the fixtures: every test session loads this file, few need the database layer.


@pytest.fixture
def store() -> Iterator[AuditStore]:
    """An empty audit store in memory (SQLite)."""
    from moderator.audit.db.store import AuditStore

    with AuditStore.open("sqlite://", memory=True) as opened:
        yield opened


@pytest.fixture
def broker() -> MemoryBroker:
    """An in-memory broker with the audit topic the sink reads (SINK_TOPIC, 4 partitions)."""
    from moderator.ingest.memory.broker import MemoryBroker
    from tests.audit_fixtures import SINK_TOPIC

    broker = MemoryBroker()
    broker.create_topic(SINK_TOPIC, 4)
    return broker
