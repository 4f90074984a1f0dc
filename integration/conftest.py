"""Fixtures for the integration tier: one embedded stack (mock Kafka + S3) per test session, and
the real Apache Kafka broker: one node per session, three nodes per module that asks."""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from kafka_support import running_kafka
from moderator.dev.kafka.cluster import ApacheKafka
from moderator.dev.stack import EmbeddedStack  # imports moto only when a stack starts

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


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[ApacheKafka]:
    """One real Kafka node (broker + controller) shared by the session; internal topics have
    one replica. Skips locally, fails with CI=true, when Java, Maven or the jars are missing."""
    with running_kafka(1) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def apache_kafka_cluster() -> Iterator[ApacheKafka]:
    """Three real Kafka nodes for one test module: replication 3 for internal and auto-created
    topics, min ISR 2, so one node may be stopped (stop_broker/start_broker) and it serves on."""
    with running_kafka(3) as kafka:
        yield kafka


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a real broker reports each node's log tail."""
    report: pytest.TestReport = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("apache_kafka", "apache_kafka_cluster"):
            kafka = funcargs.get(name)
            if isinstance(kafka, ApacheKafka):
                report.sections.append((f"{name} log tail", kafka.log_tails()))
    return report
