"""The real Apache Kafka broker for integration tests.

Without Java, Maven or the jars, a test that needs the broker skips with the reason locally and
fails with CI=true, so a CI machine that lost the broker cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from moderator.dev.errors import DevStackError
from moderator.dev.kafka.cluster import ApacheKafka
from moderator.errors import ConfigError


def broker_unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) because the real broker cannot run here."""
    message = f"real Kafka broker unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI resolves the jars in .ci/run)", pytrace=False)
    pytest.skip(f"{message} (docs/testing.md says how to get it)")


@contextmanager
def running_kafka(brokers: int, *, workdir: Path | None = None) -> Iterator[ApacheKafka]:
    """A started ApacheKafka of `brokers` nodes, stopped afterwards; a failed start fails the
    test with every node's log tail."""
    kafka = ApacheKafka(brokers, workdir=workdir)
    unavailable = failed = None
    try:
        kafka.start()
    except ConfigError as exc:
        unavailable = str(exc)
    except DevStackError as exc:
        failed = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
    # Reported outside the except blocks: the broker's error is the news, not a traceback.
    if unavailable is not None:
        broker_unavailable(unavailable)
    if failed is not None:
        pytest.fail(failed, pytrace=False)
    try:
        yield kafka
    finally:
        kafka.stop()
