"""Fixtures for the integration tier: one embedded stack (mock Kafka + S3) per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from moderator.devstack.stack import EmbeddedStack  # imports moto only when a stack starts

# The S3 server comes from the devstack extra; without it the whole tier is skipped, not failed.
pytest.importorskip(
    "moto.server",
    reason="integration tests need the devstack extra: pip install -e '.[devstack]'",
)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    """A started EmbeddedStack shared by the session; topics and groups must be unique per test."""
    with EmbeddedStack() as started:
        yield started


@pytest.fixture
def unique() -> str:
    """A short suffix valid in topic, group and bucket names: lowercase hex."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def kafka_conf(stack: EmbeddedStack) -> dict[str, Any]:
    """A fresh librdkafka config dict pointing at the stack (tests may add to it)."""
    return {"bootstrap.servers": stack.bootstrap_servers}
