"""One deadline for a transactional checkpoint's offsets and commit steps: a broker that keeps
answering "retry" costs at most `timeout_s` before the checkpoint is aborted, and the commit
(which goes on in the background when it times out) always gets a fair share of it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from moderator.emit.records import OutRecord
from moderator.ingest.checkpoint import CheckpointAborted, commit_checkpoint
from moderator.ingest.tracker import Ready


def _retriable(name: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, name, retriable=True))


class StallingProducerDouble:
    """A test double of the transactional producer: each of the first `failures` offsets or
    commit attempts waits `stall_s` (or the whole timeout it is given, if shorter), then fails
    with a retriable error, as a client does while a coordinator or leader is away."""

    def __init__(self, *, failures: int, stall_s: float) -> None:
        self.failures, self.stall_s = failures, stall_s
        self.attempts: list[tuple[str, float, float]] = []  # step, timeout given, started at
        self.aborted: list[float] = []

    def _attempt(self, step: str, timeout: float) -> None:
        self.attempts.append((step, timeout, time.monotonic()))
        if len(self.attempts) <= self.failures:
            time.sleep(min(self.stall_s, timeout))
            raise _retriable(step)

    def begin_transaction(self) -> None:
        pass

    def produce(self, topic: str, **_: Any) -> None:
        pass

    def send_offsets_to_transaction(self, _o: Any, _m: Any, timeout: float = -1) -> None:
        self._attempt("send_offsets", timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._attempt("commit", timeout)

    def abort_transaction(self, timeout: float = -1) -> None:
        self.aborted.append(timeout)


class ConsumerDouble:
    def consumer_group_metadata(self) -> object:
        return object()


def _ready() -> dict[tuple[str, int], Ready[OutRecord]]:
    record = OutRecord("moderation.verdicts", b"k", b"v", [])
    return {("uploads", 0): Ready(next_offset=5, count=1, outputs=[record])}


def _commit(producer: StallingProducerDouble, timeout_s: float) -> None:
    commit_checkpoint(
        producer,  # type: ignore[arg-type]
        ConsumerDouble(),  # type: ignore[arg-type]
        _ready(),
        exactly_once=True,
        timeout_s=timeout_s,
    )


def _within_the_deadline(producer: StallingProducerDouble, timeout_s: float) -> None:
    """Every attempt was given at most what was left of one deadline set before the first (a
    commit attempt a third of the timeout at least)."""
    t0 = producer.attempts[0][2]
    for step, given, started in producer.attempts:
        left = timeout_s - (started - t0)
        least = timeout_s / 3 if step == "commit" else 0.1
        assert given <= max(left, least) + 0.01, (step, given, left)


def test_a_broker_that_keeps_answering_retry_costs_one_timeout_then_the_abort() -> None:
    producer = StallingProducerDouble(failures=1_000, stall_s=0.25)
    started = time.monotonic()
    with pytest.raises(CheckpointAborted):
        _commit(producer, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert len(producer.attempts) >= 3  # retried while time was left
    _within_the_deadline(producer, 1.0)
    assert elapsed < 1.0 + 0.2, elapsed  # never a fresh timeout for a late attempt
    assert producer.aborted == [1.0]


def test_the_commit_gets_what_the_offsets_step_left() -> None:
    producer = StallingProducerDouble(failures=2, stall_s=0.3)  # offsets fail twice, then all
    _commit(producer, timeout_s=2.0)
    assert [step for step, _, _ in producer.attempts] == ["send_offsets"] * 3 + ["commit"]
    _within_the_deadline(producer, 2.0)
    commit_given = producer.attempts[-1][1]
    assert commit_given < 2.0 - 0.6, commit_given  # not a fresh 2 s for the second step
    assert producer.aborted == []


def test_the_commit_gets_a_third_of_the_timeout_when_the_offsets_used_more() -> None:
    # offsets: fail at 0.6 s and at 1.25 s, then succeed with about 0.2 s of 1.5 left
    producer = StallingProducerDouble(failures=2, stall_s=0.6)
    _commit(producer, timeout_s=1.5)
    assert [step for step, _, _ in producer.attempts] == ["send_offsets"] * 3 + ["commit"]
    _within_the_deadline(producer, 1.5)
    t0, commit_at = producer.attempts[0][2], producer.attempts[-1][2]
    assert 1.5 - (commit_at - t0) < 0.45  # less than a third was left
    assert producer.attempts[-1][1] == pytest.approx(0.5, abs=0.01)  # given a third anyway
    assert producer.aborted == []
