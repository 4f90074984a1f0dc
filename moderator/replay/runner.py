"""A replay run: the plan's ranges through the same ingest loop and pipeline as `moderator run`.

The run has its own consumer group and transactional id (`{group}.replay.{run_id}`), so it never
moves the live group's offsets and a resumed run continues from its own last checkpoint: with
`exactly_once` each event's replayed verdict is committed once, together with its offset. Its
producer is handed only records for the output topic; anything else the pipeline would write
(audit records) is dropped and counted. A malformed message in the range is skipped and
counted, logged as `malformed_skipped`: a replay writes no DLQ record.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from moderator.ingest.jobs import LoopStats
from moderator.ingest.kafka import make_consumer, make_producer
from moderator.ingest.loop import IngestLoop
from moderator.ingest.offsets import partitions_of, read_until, watermarks_of
from moderator.replay.originals import Originals
from moderator.replay.plan import RunPlan
from moderator.replay.processor import (
    LIVE_AUDIT,
    LIVE_VERDICTS,
    ReplayProcessor,
    ReplayStats,
    model_id,
)
from moderator.replay.reader import RangeConsumer
from moderator.replay.tenants import tenant_check
from moderator.settings import Settings

if TYPE_CHECKING:
    from moderator.service import Pipeline

log = structlog.get_logger("moderator.replay")

LIVE_DLQ = "\x00replay-dlq"


def replay_overrides(
    settings: Settings, plan: RunPlan, max_in_flight: int | None
) -> dict[str, Any]:
    """The settings a run's clients and pipeline are built with (on top of the operator's)."""
    overrides: dict[str, Any] = {
        "kafka.group_id": f"{settings.kafka.group_id}.replay.{plan.run_id}",
        "kafka.transactional_id": f"{settings.transactional_id}.replay.{plan.run_id}",
        "kafka.topics.verdicts": LIVE_VERDICTS,
        "kafka.topics.audit": LIVE_AUDIT,
        "kafka.topics.dlq": LIVE_DLQ,
        "policies.dir": plan.policies_dir,
        "engine.kind": plan.engine,
        "engine.model": plan.model,
    }
    if max_in_flight is not None:
        overrides["flow.high_in_flight"] = max_in_flight
        overrides["flow.low_in_flight"] = max(0, max_in_flight // 2)
        overrides["fetch.concurrency"] = min(settings.fetch.concurrency, max_in_flight)
        if settings.fetch.decode_workers is not None:  # never more than the fetch workers
            overrides["fetch.decode_workers"] = min(settings.fetch.decode_workers, max_in_flight)
    return overrides


class OneTopicProducer:
    """The loop's producer for a replay: passes on records for `topic`, drops the rest."""

    def __init__(self, inner: Any, topic: str) -> None:
        self._inner = inner
        self._topic = topic
        self.dropped: Counter[str] = Counter()

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        if topic != self._topic:
            self.dropped[{LIVE_DLQ: "dlq", LIVE_AUDIT: "audit"}.get(topic, topic)] += 1
            return
        self._inner.produce(topic, *args, **kwargs)

    def renewed(self, inner: Any) -> OneTopicProducer:
        """This producer, passing on to `inner` from now on (the loop's replacement for a
        producer whose call got stuck; the counts go on)."""
        self._inner = inner
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ReplayLoop(IngestLoop):
    """The ingest loop of a replay: a message that cannot be parsed is skipped and counted,
    never dead-lettered (the live service has dead-lettered it already), and its log line
    says so."""

    malformed = 0  # messages skipped

    def _dead_letter(self, msg: Any, tp: tuple[str, int], offset: int, reason: str) -> None:
        self.malformed += 1
        log.warning("malformed_skipped", topic=tp[0], partition=tp[1], offset=offset, reason=reason)
        self._complete(tp, offset, [])


@dataclass
class RunOutcome:
    completed: bool  # every range read to its end and committed
    loop: LoopStats
    replay: ReplayStats
    dropped: dict[str, int]
    resumed_from: dict[int, int]
    malformed: int = 0  # malformed messages of the range skipped by this process


def run_plan(
    settings: Settings,
    plan: RunPlan,
    stop: threading.Event,
    *,
    originals: Originals,
    on_checkpoint: Callable[[int], None] | None = None,
    on_resumed: Callable[[int], None] | None = None,
    on_missing_policy: Callable[[str], None] | None = None,
    on_built: Callable[[Pipeline], None] | None = None,
) -> RunOutcome:
    """Replay the plan until its ranges are done or `stop` is set. `settings` carry
    replay_overrides. `on_resumed(offsets)` is called once reading starts, for a resumed run,
    with the offsets of the ranges its earlier processes committed; `on_missing_policy(tenant)`
    for each kept event of a tenant that no policy decides (its verdict will be an
    unknown_tenant error); `on_built(pipeline)` once the pipeline is built, before consuming
    starts. Raises ConfigError (bad policies, engine) and FatalKafkaError."""
    from moderator.service import build_pipeline

    pipeline = build_pipeline(settings)
    if on_built is not None:
        on_built(pipeline)
    processor = ReplayProcessor(
        pipeline.processor,
        run_id=plan.run_id,
        output_topic=plan.output_topic,
        originals=originals,
        event_filter=plan.event_filter,
        rate=plan.rate,
        reuse_assessments=plan.reuse_assessments,
        model_id=model_id(pipeline.engine.info.model_dump()),
        stop=stop,
        check_tenant=tenant_check(pipeline.policies, on_missing_policy),
    )
    inner_consumer = make_consumer(settings)
    consumer = RangeConsumer(
        inner_consumer, plan.uploads_topic, plan.ranges, threading.Event(), on_resumed=on_resumed
    )
    producer = OneTopicProducer(make_producer(settings), plan.output_topic)
    loop = ReplayLoop(
        settings=settings,
        consumer=consumer,
        producer=producer,
        processor=processor,
        on_checkpoint=on_checkpoint,
        renew_producer=lambda: producer.renewed(make_producer(settings)),
    )
    try:
        loop.run(_RunStop(stop, lambda: consumer.done and loop.in_flight == 0))
        completed = consumer.done and _committed_to_end(inner_consumer, plan, consumer.last_handed)
    finally:
        try:
            processor.close()
            consumer.close()
        finally:
            pipeline.close()
            producer.flush(5)
    dropped = dict(producer.dropped)
    return RunOutcome(
        completed, loop.stats, processor.stats, dropped, consumer.resumed_from, loop.malformed
    )


class _RunStop(threading.Event):
    """The loop's stop signal: set by the operator (SIGINT, SIGTERM), or true by itself once
    the ranges are read and every event is committed. Until then the loop checkpoints as it
    goes, so a killed run loses at most the last commit interval."""

    def __init__(self, stop: threading.Event, finished: Callable[[], bool]) -> None:
        super().__init__()
        self._stop = stop
        self._finished = finished

    def is_set(self) -> bool:
        return self._stop.is_set() or self._finished()


def _committed_to_end(consumer: Any, plan: RunPlan, handed: dict[int, int]) -> bool:
    """Whether the run's group committed past every record this process handed out (the last
    offsets of a range may be transaction markers, which are never handed out)."""
    if not handed:
        return True
    asked = [TopicPartition(plan.uploads_topic, p) for p in sorted(handed)]
    committed = {tp.partition: tp.offset for tp in consumer.committed(asked, timeout=30)}
    return all(committed.get(p, -1) > last for p, last in handed.items())


def collect_results(consumer: Any, plan: RunPlan, *, timeout_s: float) -> dict[str, dict[str, Any]]:
    """This run's replayed verdicts, by event id, read from the output topic after the plan's
    recorded start (read_committed: aborted transactions are invisible). Left unassigned."""
    topic = plan.output_topic
    ends = {
        p: watermarks_of(consumer, topic, p, timeout_s)[1]
        for p in partitions_of(consumer, topic, timeout_s)
    }
    starts = {p: plan.output_start.get(p, OFFSET_BEGINNING) for p in ends}
    found: dict[str, dict[str, Any]] = {}
    for msg in read_until(consumer, topic, starts, ends):
        try:
            data = json.loads(msg.value() or b"")
        except (ValueError, RecursionError):
            continue  # not a verdict: never one of this run's
        replay = data.get("replay") if isinstance(data, dict) else None
        if isinstance(replay, dict) and replay.get("run_id") == plan.run_id:
            found[data["event_id"]] = data
    return found
