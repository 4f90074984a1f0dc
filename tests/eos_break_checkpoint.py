"""A pytest plugin that breaks the checkpoint for a whole run, to show the exactly-once tests
can fail: `pytest -p tests.eos_break_checkpoint integration/test_exactly_once_kafka.py`.

Every IngestLoop of the test process then commits its offsets with the consumer, outside the
transaction, before the transaction commits (tests.eos_scenarios.broken_commit_checkpoint).
`moderator run` subprocesses started by the SIGKILL test get the same checkpoint through
`python -m tests.eos_broken_run`. Nothing in the package can reach this.
"""

from __future__ import annotations

import pytest

from tests.eos_scenarios import break_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    break_checkpoint()
