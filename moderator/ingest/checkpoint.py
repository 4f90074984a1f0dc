"""The commit protocol: one checkpoint, one transaction (docs/architecture.md)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from opentelemetry.trace import NoOpTracer, Tracer

from moderator.emit.records import OutRecord
from moderator.errors import ConfigError, ModeratorError
from moderator.ingest.ports import Consumer, Producer
from moderator.ingest.stuck import ProducerStuck, bounded
from moderator.ingest.tracker import TP, Ready
from moderator.obs.tracing import publish_span

log = structlog.get_logger("moderator.ingest")

CLOSE_S = 10.0
"""After the final checkpoint: closing the engine window (up to 5 s) and the Kafka clients."""


def checkpoint_timeout_s(transaction_timeout_ms: int) -> float:
    """The deadline a checkpoint's offsets and commit steps share (`commit_checkpoint`)."""
    return max(10.0, transaction_timeout_ms / 1000 / 2)


def stop_budget_s(drain_grace_s: float, transaction_timeout_ms: int) -> float:
    """The longest a clean stop of `moderator run` may take after SIGTERM: the drain, the
    final checkpoint (4/3 of its deadline before an abort, since a commit attempt always gets a
    third of it) and closing. An orchestrator's grace period should be at least this."""
    return drain_grace_s + 4 / 3 * checkpoint_timeout_s(transaction_timeout_ms) + CLOSE_S


class CheckpointAborted(ModeratorError):
    """The outputs of this checkpoint were not committed: rewind and process again."""


class FatalKafkaError(ModeratorError):
    """The producer can never be used again (e.g. fenced by a newer instance): exit non-zero."""


FENCED_HINT = (
    "another process started with this process's kafka.transactional_id (by default "
    "moderator-{group_id}-{instance_id}) and took over: give each process its own instance_id"
)


def _error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _fatal(exc: KafkaException) -> KafkaError | None:
    """The exception's error when librdkafka says the producer can never be used again."""
    error = _error_of(exc)
    return error if error is not None and error.fatal() else None


_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})


def _fatal_text(what: str, err: KafkaError) -> str:
    """A fatal error's line, with what to do when another process fenced this one."""
    hint = f": {FENCED_HINT}" if err.code() in _FENCED_CODES else ""
    return f"{what}: {err}{hint}"


def client_failure(exc: KafkaException) -> FatalKafkaError:
    """A Kafka client error that no step handled, as the FatalKafkaError that ends the loop:
    the process exits and its successor starts from the last commit."""
    err = _error_of(exc)
    what = "Kafka client error the consume loop cannot go on after"
    return FatalKafkaError(_fatal_text(what, err) if err is not None else f"{what}: {exc}")


def start_transactions(producer: Producer, timeout_s: float, transaction_timeout_ms: int) -> None:
    """`init_transactions`. The broker refusing `kafka.transaction_timeout_ms` is a ConfigError
    (one line, exit 2); any other fatal refusal a FatalKafkaError."""
    try:
        producer.init_transactions(timeout_s)
    except KafkaException as exc:
        err = _error_of(exc)
        if err is not None and err.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT:
            raise ConfigError(
                f"kafka.transaction_timeout_ms: {transaction_timeout_ms} is above the broker's "
                "transaction.max.timeout.ms (900000 unless the cluster sets it): lower it, or "
                "raise the brokers' limit"
            ) from exc
        if (fatal := _fatal(exc)) is not None:
            raise FatalKafkaError(_fatal_text("fatal Kafka error at start-up", fatal)) from exc
        raise


def commit_checkpoint(
    producer: Producer,
    consumer: Consumer,
    ready: Mapping[TP, Ready[OutRecord]],
    *,
    exactly_once: bool,
    timeout_s: float,
    tracer: Tracer | None = None,
) -> int:
    """Publish the outputs of the completed prefixes and commit their offsets together.

    exactly_once:
      1. begin_transaction()
      2. produce every held output, partition by partition, in offset order
      3. send_offsets_to_transaction(next offsets, the consumer's group metadata)
      4. commit_transaction()
      Steps 3 and 4 are retried while librdkafka calls the error retriable (a coordinator
      moving to another broker, or still completing the previous commit): aborting then can
      reach the coordinator before that commit is complete, which it refuses with a fatal
      INVALID_TXN_STATE. Both steps share one deadline, `timeout_s`: each attempt gets only
      the time left (a commit attempt at least `timeout_s` / 3), so a broker that stays away
      costs at most 4/3 x `timeout_s` before the abort (and the abort at most `timeout_s`
      more), however many attempts were made.
      An error that requires abort, or the deadline → abort_transaction(), CheckpointAborted.
      Each of these calls runs in a helper thread (moderator/ingest/stuck.py); one still running
      a third of `timeout_s` after the time it was given raises ProducerStuck, with no abort:
      the producer must be replaced, and its successor's init_transactions aborts for it.
    at_least_once:
      1. produce every held output (idempotent producer)
      2. flush and check every delivery report
      3. commit() the offsets synchronously
      Any failure → CheckpointAborted (outputs may repeat after the rewind: at least once).
    A fatal producer error raises FatalKafkaError in both modes. Returns the records produced.
    All of it is one `moderator.publish` span linking the event spans whose outputs it carries.
    """
    offsets = [TopicPartition(t, p, r.next_offset) for (t, p), r in ready.items()]
    records = [rec for r in ready.values() for rec in r.outputs]
    messages = sum(r.count for r in ready.values())
    tracer = tracer if tracer is not None else NoOpTracer()
    with publish_span(tracer, records, exactly_once=exactly_once, messages=messages):
        _commit(
            producer, consumer, records, offsets, exactly_once=exactly_once, timeout_s=timeout_s
        )
    return len(records)


def replace_producer(
    renew: Callable[[], Producer] | None, stuck: ProducerStuck, timeout_s: float
) -> Producer:
    """A new producer, transactions initialised, in place of one whose call is `stuck`; its
    init_transactions fences the stuck one and aborts the transaction that one left open.
    Without `renew` (a producer the caller owns), or when the new one cannot start, the process
    cannot go on: FatalKafkaError, and the restart recovers as after a crash."""
    if renew is None:
        raise FatalKafkaError(f"{stuck}; no way to replace the producer here") from stuck
    log.error("kafka_producer_replaced", reason=str(stuck))
    producer = renew()
    try:
        bounded(lambda: producer.init_transactions(timeout_s), timeout_s * 4 / 3, "init")
    except (KafkaException, ProducerStuck) as exc:
        raise FatalKafkaError(f"{stuck}; its replacement did not start: {exc}") from exc
    return producer


def _commit(
    producer: Producer,
    consumer: Consumer,
    records: list[OutRecord],
    offsets: list[TopicPartition],
    *,
    exactly_once: bool,
    timeout_s: float,
) -> None:
    try:
        if exactly_once:
            _transactional(producer, consumer, records, offsets, timeout_s)
        else:
            _at_least_once(producer, consumer, records, offsets, timeout_s)
    except KafkaException as exc:
        if (fatal := _fatal(exc)) is not None:
            raise FatalKafkaError(_fatal_text("fatal Kafka error", fatal)) from exc
        if exactly_once:
            _abort(producer, timeout_s)
        raise CheckpointAborted(f"checkpoint aborted: {_error_of(exc) or exc}") from exc


def _transactional(
    producer: Producer,
    consumer: Consumer,
    records: list[OutRecord],
    offsets: list[TopicPartition],
    timeout_s: float,
) -> None:
    producer.begin_transaction()
    for rec in records:
        _produce(producer, rec, None)
    metadata = consumer.consumer_group_metadata()
    deadline = time.monotonic() + timeout_s
    grace = timeout_s / 3
    _retry_retriable(
        lambda left: producer.send_offsets_to_transaction(offsets, metadata, left),
        deadline,
        "send_offsets_to_transaction",
        grace_s=grace,
    )
    # A commit that times out may go on in the background, and librdkafka's documentation has
    # the application call it again rather than give up: the commit gets a third of the time at
    # least, even when the offsets step (waiting for a new group coordinator, say) used more.
    _retry_retriable(
        producer.commit_transaction, deadline, "commit_transaction", least_s=grace, grace_s=grace
    )


def _at_least_once(
    producer: Producer,
    consumer: Consumer,
    records: list[OutRecord],
    offsets: list[TopicPartition],
    timeout_s: float,
) -> None:
    failures: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for rec in records:
        _produce(producer, rec, on_delivery)
    remaining = producer.flush(timeout_s)
    if remaining:
        raise CheckpointAborted(f"{remaining} outputs unacknowledged after {timeout_s}s")
    if failures:
        raise CheckpointAborted(f"{len(failures)} outputs failed: {failures[0]}")
    consumer.commit(offsets=offsets, asynchronous=False)


def _produce(producer: Producer, rec: OutRecord, on_delivery: Any) -> None:
    while True:
        try:
            producer.produce(
                rec.topic,
                value=rec.value,
                key=rec.key,
                headers=rec.headers,
                on_delivery=on_delivery,
            )
            return
        except BufferError:
            producer.poll(0.05)  # local queue full: let deliveries drain, then retry


# The least time one attempt is given: librdkafka reads a timeout of 0 as "do not wait".
_MIN_ATTEMPT_S = 0.1


def _retry_retriable(
    call: Callable[[float], None],
    deadline: float,
    what: str,
    *,
    grace_s: float,
    least_s: float = _MIN_ATTEMPT_S,
) -> None:
    """`call(seconds left before deadline, or least_s if more)` until it succeeds; a retriable
    error is retried while time is left, any other error (or the deadline passing) is raised.
    An attempt still running `grace_s` after the time it was given raises ProducerStuck."""
    while True:
        given = max(deadline - time.monotonic(), least_s)
        try:
            bounded(functools.partial(call, given), given + grace_s, what)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = err is not None and hasattr(err, "retriable") and err.retriable()
            if not retriable or time.monotonic() + 0.05 >= deadline:
                raise
            time.sleep(0.05)


def _abort(producer: Producer, timeout_s: float) -> None:
    try:
        bounded(lambda: producer.abort_transaction(timeout_s), timeout_s * 4 / 3, "abort")
    except KafkaException as exc:
        if (fatal := _fatal(exc)) is not None:
            raise FatalKafkaError(_fatal_text("fatal Kafka error while aborting", fatal)) from exc
        # No open transaction (it failed before begin) or already aborted: nothing to undo.
