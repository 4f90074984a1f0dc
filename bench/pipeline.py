"""Streaming throughput of the moderator pipeline against a bare Kafka loop on the same broker.

Run from the project root:

    .venv/bin/python bench/pipeline.py [--events N] [--decode-images K] [--no-s3] [--workers N]

Everything but phase 4 runs in this one process: the embedded stack (librdkafka's mock Kafka
cluster plus moto's S3 server, see docs/architecture.md) is started once, N UploadEvent messages
are written once to one input topic, and every measured consumer reads those same N messages
through its own fresh consumer group and writes to its own fresh output topics.

What is measured:

1. ceiling: a bare confluent-kafka loop. It consumes the N events, parses each JSON value and
   produces one ~1 KB record per event to an output topic; every 1000 events (the service's
   default checkpoint size) it flushes the producer and then commits those events' offsets
   synchronously (at-least-once: produce, flush, commit; bench/brokers.py also runs it with a
   transaction per batch on a real broker).
   It uses the same client settings as the service where they matter (idempotent producer,
   acks=all, linger.ms=5, manual commits). Nothing is fetched, decoded or classified: this is
   what the broker and the client library allow from one Python thread, not a target the
   pipeline could reach.
2. pipeline: the real service (`run_service`: the ingest loop, offset tracker, checkpoints,
   processor, engine window) in a thread, `kafka.delivery=at_least_once` (the mock broker cannot
   do exactly-once), the `fake` engine with zero latency, default flow and commit settings.
   It ends when a separate reader has seen a verdict for each of the N event ids. Two variants:
   - s3: the objects are in moto's S3 server, fetched over HTTP by the real S3 adapter;
   - memory: the objects are in an InMemoryObjectStore handed to build_pipeline, which takes
     moto out of the picture and leaves Kafka plus the pipeline's own overhead.
   The images are tiny (64x64 JPEG and PNG, unique so the verdict cache never answers), so this
   measures the streaming path, not decoding or inference. The pipeline writes two records per
   event (verdict + audit), the ceiling one.
3. decode: `run_decode_bench` from bench/decode_bench.py: ms per 12-megapixel JPEG decoded in
   full and with JPEG draft downscaling to the engine's input size.
4. with --workers N: the in-memory pipeline in 1 worker process and in N, as
   `moderator run --workers N` runs it, and the gain (bench/pipeline_workers.py explains the
   method; docs/performance.md the figures).

How to read the numbers: "ev/s" counts from the first message a consumer received to the end
(the ceiling's last commit; the Nth verdict seen by the reader for the pipeline), so the consumer
group join is left out; "wall s" includes it. "x ceiling" is pipeline ev/s over ceiling ev/s. The
pipeline checkpoints every 1000 events or every second (kafka.commit_interval_ms), whichever
comes first, so its last verdicts can wait up to a second for their checkpoint; with a small N
that tail weighs on ev/s. "cores busy" is this process's CPU time (every thread: the service,
the reader, librdkafka, moto) over the same window divided by its length; well below the number
of CPUs means the run waits on something (the GIL, a lock, a timer), not on CPU. moto's server
and the mock broker live in this process, so moto's request handling competes with the
pipeline for the GIL: the s3 variant measures moto as much as the fetch path, and the memory
variant is the figure for the pipeline itself. "CPU by thread" (pipeline runs, Linux) splits
the service's CPU from its start to the last verdict among its threads (bench/thread_cpu.py
names the groups), in µs per event: which thread's work a change should cut. With the default
N the ceiling is over in about a tenth of a second, so its rate (and every ratio to it) is an
order of magnitude, not a precise figure; raise --events for a steadier one. On a machine with
few cores all figures are lower bounds for a real deployment and compare best against each
other.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

import thread_cpu
from decode_bench import run_decode_bench
from moderator import heap
from moderator.dev.samples import Sample, make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.fetch.store import InMemoryObjectStore, ObjectStore
from moderator.ingest.jobs import LoopStats
from moderator.ingest.kafka import consumer_config
from moderator.ingest.ports import Consumer as ConsumerPort
from moderator.logs import configure_logging
from moderator.policy.bundled import write_default_policy
from moderator.service import build_pipeline, run_service
from moderator.settings import KafkaSettings, Settings, load_settings
from pipeline_workers import WorkersRun, fresh_topic, run_workers

DEFAULT_EVENTS = 5000
BUCKET = "uploads"
TENANT = "bench"
IMAGE_SIZE = (64, 64)
CEILING_RECORD_BYTES = 1024
# The service's checkpoint size by default: the bare loop commits batches of the same size.
COMMIT_EVERY: int = KafkaSettings.model_fields["commit_max_events"].default
CONSUME_BATCH = 500
UPLOAD_WORKERS = 8
DECODE_TARGET = 448
SHORT_RUN_S = 0.5
MAX_BENCH_WORKERS = 4  # the mock cluster's partitions per topic: more would sit idle


@dataclass
class Phase:
    """One measured run over the N events."""

    name: str
    events: int = 0
    wall_s: float = 0.0  # start (subscribe / service start) → done
    active_s: float = 0.0  # first message consumed → done
    cpu_s: float = 0.0  # CPU time of this whole process (all threads) over active_s
    commits: int = 0
    produced: int = 0
    duplicates: int = 0
    verdict_errors: int = 0
    mean_output_bytes: float = 0.0
    thread_cpu_s: dict[str, float] = field(default_factory=dict)  # by thread group (thread_cpu)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.active_s if self.active_s > 0 else 0.0

    @property
    def busy(self) -> float:
        """Cores kept busy on average while active."""
        return self.cpu_s / self.active_s if self.active_s > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


class _TimedConsumer(Consumer):
    """A Consumer that remembers when consume() first returned a message."""

    first_message_at: float | None = None
    first_message_cpu: float = 0.0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        messages: list[Any] = super().consume(num_messages, timeout)
        if messages and self.first_message_at is None:
            self.first_message_at = time.perf_counter()
            self.first_message_cpu = time.process_time()
        return messages


# -- set-up ---------------------------------------------------------------------------------------


def _make_images(n: int) -> list[Sample]:
    """n distinct tiny images, three JPEGs to one PNG (distinct bytes: no verdict-cache hits)."""
    return [make_sample("png" if i % 4 == 3 else "jpeg", i, IMAGE_SIZE) for i in range(n)]


def _object_key(i: int, sample: Sample) -> str:
    return f"{TENANT}/bench/{i:06d}-{sample.name}"


def _upload(stack: EmbeddedStack, images: Sequence[Sample]) -> float:
    """PUT every image into moto's S3 server with a thread pool; returns the seconds it took."""
    s3 = stack.s3_client()  # boto3 clients are thread-safe; its pool holds 10 connections

    def put(item: tuple[int, Sample]) -> None:
        i, sample = item
        s3.put_object(
            Bucket=BUCKET,
            Key=_object_key(i, sample),
            Body=sample.data,
            ContentType=sample.content_type,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        list(pool.map(put, enumerate(images)))
    elapsed = time.perf_counter() - started
    s3.close()
    return elapsed


def _publish_events(bootstrap: str, topic: str, run_id: str, images: Sequence[Sample]) -> None:
    """One UploadEvent per image, keyed by object key so they spread over all partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, sample in enumerate(images):
        key = _object_key(i, sample)
        event = {
            "event_id": f"{run_id}-{i:06d}",
            "tenant_id": TENANT,
            "object": {
                "bucket": BUCKET,
                "key": key,
                "size": len(sample.data),
                "content_type": sample.content_type,
            },
            "uploaded_at": "2026-01-01T00:00:00Z",
            "context": {"surface": "post"},
        }
        _produce(producer, topic, key.encode(), json.dumps(event).encode())
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} input events not acknowledged by the broker")


def _write_policies(directory: Path) -> Path:
    write_default_policy(directory)
    (directory / f"{TENANT}.yaml").write_text("on_error: review\n", encoding="utf-8")
    return directory


def _produce(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


# -- 1. ceiling -----------------------------------------------------------------------------------


def _ceiling_record(event: dict[str, Any]) -> bytes:
    """A verdict-sized record: the event's identity plus padding up to ~1 KB."""
    doc = {
        "schema": "bench.ceiling/v1",
        "event_id": event["event_id"],
        "tenant_id": event["tenant_id"],
        "object": event["object"],
        "decision": "allow",
        "pad": "",
    }
    base = len(json.dumps(doc))
    doc["pad"] = "x" * max(0, CEILING_RECORD_BYTES - base)
    return json.dumps(doc).encode()


def ceiling_topic(run_id: str) -> str:
    """The output topic of the bare loop's run `run_id`."""
    return f"bench-ceiling-out-{run_id}"


def run_ceiling(
    bootstrap: str,
    topic: str,
    n: int,
    run_id: str,
    timeout_s: float,
    *,
    exactly_once: bool = False,
    name: str = "ceiling: bare consume→produce",
) -> Phase:
    """The bare loop over the first n messages of `topic`, checkpointing every COMMIT_EVERY.

    Both modes do the same work per message (parse, produce, note the next offset) and end a
    batch the way the service's checkpoint does: exactly_once sends the batch's offsets to the
    transaction opened at its first message and commits it; at_least_once flushes the producer
    and commits those offsets synchronously.
    """
    phase = Phase(name)
    out_topic = ceiling_topic(run_id)
    consumer = _TimedConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ceiling-{run_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    producer_conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
    if exactly_once:
        producer_conf["transactional.id"] = f"bench-ceiling-{run_id}"
    producer = Producer(producer_conf)
    failures: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    sizes = 0
    since_commit = 0
    batch: dict[tuple[str, int], int] = {}  # (topic, partition) → next offset to commit
    started = time.perf_counter()
    deadline = started + timeout_s
    if exactly_once:
        producer.init_transactions(30)
    consumer.subscribe([topic])
    try:
        while phase.events < n and time.perf_counter() < deadline:
            for msg in consumer.consume(CONSUME_BATCH, 0.05):
                if msg.error() is not None:
                    continue
                if exactly_once and not batch:
                    producer.begin_transaction()
                record = _ceiling_record(json.loads(msg.value()))
                sizes += len(record)
                _produce(producer, out_topic, msg.key() or b"", record, on_delivery)
                batch[(msg.topic(), msg.partition())] = msg.offset() + 1
                phase.events += 1
                since_commit += 1
            producer.poll(0)
            if batch and (since_commit >= COMMIT_EVERY or phase.events >= n):
                _end_batch(producer, consumer, batch, exactly_once=exactly_once)
                phase.commits += 1
                since_commit = 0
                batch.clear()
        done = time.perf_counter()
        phase.cpu_s = time.process_time() - consumer.first_message_cpu
    finally:
        consumer.close()
        producer.flush(10)
    if failures:
        raise RuntimeError(f"{name}: {len(failures)} outputs failed: {failures[0]}")
    _finish(phase, started, consumer.first_message_at, done, n)
    phase.produced = phase.events
    phase.mean_output_bytes = sizes / phase.events if phase.events else 0.0
    return phase


def _end_batch(
    producer: Producer, consumer: Consumer, batch: dict[tuple[str, int], int], *, exactly_once: bool
) -> None:
    offsets = [TopicPartition(t, p, o) for (t, p), o in batch.items()]
    if exactly_once:
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        return
    if producer.flush(30):
        raise RuntimeError("bare loop: outputs not acknowledged within 30 s")
    consumer.commit(offsets=offsets, asynchronous=False)


# -- 2. pipeline ----------------------------------------------------------------------------------


def _pipeline_settings(
    bootstrap: str,
    policies: Path,
    uploads: str,
    label: str,
    run_id: str,
    *,
    delivery: str = "at_least_once",
    stack: EmbeddedStack | None = None,
) -> Settings:
    """The service's settings for one run; `stack` points the S3 adapter at its moto server."""
    return load_settings(
        None,
        _pipeline_overrides(
            bootstrap, policies, uploads, label, run_id, delivery=delivery, stack=stack
        ),
    )


def _pipeline_overrides(
    bootstrap: str,
    policies: Path,
    uploads: str,
    label: str,
    run_id: str,
    *,
    delivery: str = "at_least_once",
    stack: EmbeddedStack | None = None,
) -> dict[str, Any]:
    """What _pipeline_settings sets, as dotted keys (a worker process loads them itself)."""
    prefix = f"bench-{label}-{run_id}"
    overrides: dict[str, Any] = {
        "instance_id": "bench",
        "engine.kind": "fake",
        "engine.fake.latency_ms": 0.0,
        "kafka.bootstrap_servers": bootstrap,
        "kafka.delivery": delivery,
        "kafka.group_id": prefix,
        "kafka.topics.uploads": uploads,
        "kafka.topics.verdicts": f"{prefix}-verdicts",
        "kafka.topics.audit": f"{prefix}-audit",
        "kafka.topics.dlq": f"{prefix}-dlq",
        "policies.dir": policies,
        "log.level": "warning",
    }
    if stack is not None:
        overrides.update({"s3.endpoint_url": stack.s3_endpoint_url, "s3.region": stack.region})
    return overrides


def run_pipeline(
    settings: Settings,
    name: str,
    n: int,
    store: ObjectStore | None,
    timeout_s: float,
) -> Phase:
    phase = Phase(name)
    pipeline = build_pipeline(settings, store=store)
    print(f"  objects tracked by the garbage collector: {len(gc.get_objects()):,}")
    heap.settle()  # as `moderator run` does once its pipeline is built
    consumer = _TimedConsumer(consumer_config(settings))
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"{settings.kafka.group_id}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "allow.auto.create.topics": True,  # the mock broker creates the topic on request
            "fetch.wait.max.ms": 10,
        }
    )
    # Assigned, not subscribed: a group join would add seconds of the reader's own to the run.
    reader.assign(_all_partitions(reader, settings.kafka.topics.verdicts))
    stop = threading.Event()
    errors: list[BaseException] = []
    result: list[LoopStats] = []

    def serve() -> None:
        try:
            result.append(
                run_service(
                    settings, stop, pipeline=pipeline, consumer=cast("ConsumerPort", consumer)
                )
            )
        except BaseException as exc:  # reported after the run; the bench must not hang
            errors.append(exc)
            stop.set()

    seen: set[str] = set()
    sizes = 0
    worker = threading.Thread(target=serve, name="moderator-bench", daemon=True)
    started = time.perf_counter()
    deadline = started + timeout_s
    threads_before = thread_cpu.snapshot()
    worker.start()
    try:
        while len(seen) < n and time.perf_counter() < deadline and not stop.is_set():
            for msg in reader.consume(CONSUME_BATCH, 0.05):
                value, err = msg.value(), msg.error()
                if err is not None or not value:
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        phase.notes.append(f"reader: {err}")
                    continue
                doc = json.loads(value)
                if doc["event_id"] in seen:
                    phase.duplicates += 1
                    continue
                seen.add(doc["event_id"])
                sizes += len(value)
                if doc.get("error") is not None:
                    phase.verdict_errors += 1
                    if phase.verdict_errors == 1:
                        phase.notes.append(f"first verdict error: {doc['error']}")
        done = time.perf_counter()
        phase.cpu_s = time.process_time() - consumer.first_message_cpu
        phase.thread_cpu_s = dict(thread_cpu.spent(threads_before, thread_cpu.snapshot()))
    finally:
        reader.close()
        stop.set()
        worker.join(settings.flow.drain_grace_s + 30)
    if errors:
        raise RuntimeError(f"{name}: the service failed: {errors[0]!r}") from errors[0]
    if worker.is_alive():
        phase.notes.append("the service did not stop within its drain grace")
    phase.events = len(seen)
    _finish(phase, started, consumer.first_message_at, done, n)
    if result:
        phase.commits = result[0].checkpoints
        phase.produced = result[0].produced
    phase.mean_output_bytes = sizes / len(seen) if seen else 0.0
    return phase


def _all_partitions(client: Consumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic` from its start; asking for it makes the mock broker create it."""
    meta = client.list_topics(topic=topic, timeout=10).topics[topic]
    if meta.error is not None or not meta.partitions:
        raise RuntimeError(f"topic {topic} is not available: {meta.error}")
    return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]


def _finish(phase: Phase, started: float, first: float | None, done: float, n: int) -> None:
    phase.wall_s = done - started
    phase.active_s = done - (first if first is not None else started)
    if phase.events < n:
        phase.notes.append(f"TIMED OUT: only {phase.events} of {n} events completed")
    elif phase.active_s < SHORT_RUN_S:
        phase.notes.append(
            f"over in under {SHORT_RUN_S} s: the rate is coarse; a larger --events steadies it"
        )


# -- 4. several processes -------------------------------------------------------------------------


def _run_worker_phases(
    workers: int,
    bootstrap: str,
    policies: Path,
    run_id: str,
    images: Sequence[Sample],
    n: int,
    timeout_s: float,
) -> list[WorkersRun]:
    """The in-memory pipeline in 1 worker process, then in `workers`, measured alike."""
    objects = [(BUCKET, _object_key(i, s), s.data) for i, s in enumerate(images)]
    runs: list[WorkersRun] = []
    with tempfile.TemporaryDirectory(prefix="moderator-bench-workers-") as tmp:
        for count in sorted({1, workers}):
            label = f"w{count}"
            uploads = f"bench-uploads-{label}-{run_id}"
            fresh_topic(bootstrap, uploads)
            overrides = {
                **_pipeline_overrides(bootstrap, policies, uploads, label, run_id),
                "http.port": 0,
            }

            def publish(topic: str) -> None:
                _publish_events(bootstrap, topic, run_id, images)

            run = run_workers(
                count,
                overrides=overrides,
                objects=objects,
                publish=publish,
                n=n,
                tmp=Path(tmp),
                timeout_s=timeout_s,
            )
            runs.append(run)
            print(
                f"  {count} worker process(es): {run.events} events, {run.rate:,.0f} ev/s from "
                f"the first event published ({run.active_s:.2f} s), workers' CPU "
                f"{run.cpu_s:.2f} s ({run.busy:.1f} cores busy)"
                + (f", duplicates {run.duplicates}" if run.duplicates else "")
            )
            for note in run.notes or []:
                print(f"    note: {note}")
    if len(runs) == 2 and runs[0].rate:
        print(f"  gain: {runs[1].rate / runs[0].rate:.2f}x with {workers} processes over 1")
    return runs


# -- report ---------------------------------------------------------------------------------------


def _cpu_line() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{usable} usable CPUs (os.cpu_count()={os.cpu_count()})"


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """A table: the first row is the header (underlined), the first column left-aligned and
    the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  " + "  ".join(cells).rstrip())
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _print_phase(phase: Phase, ceiling: Phase | None) -> None:
    ratio = f", {phase.rate / ceiling.rate:.3g}x ceiling" if ceiling and ceiling.rate else ""
    print(
        f"  {phase.name}: {phase.events} events, {phase.rate:,.0f} ev/s from first message "
        f"({phase.active_s:.2f} s), {phase.wall_rate:,.0f} ev/s wall ({phase.wall_s:.2f} s)"
        f"{ratio}"
    )
    print(
        f"    CPU {phase.cpu_s:.2f} s while active ({phase.busy:.1f} cores busy), "
        f"commits/checkpoints {phase.commits}, records produced {phase.produced}, "
        f"mean output record {phase.mean_output_bytes:,.0f} B"
        + (f", duplicates {phase.duplicates}" if phase.duplicates else "")
        + (f", verdicts with error {phase.verdict_errors}" if phase.verdict_errors else "")
    )
    _print_threads(phase)
    for note in phase.notes:
        print(f"    note: {note}")


def _print_threads(phase: Phase) -> None:
    """The service's CPU by thread group, in µs per event (groups under 1% left out)."""
    total = sum(phase.thread_cpu_s.values())
    if not phase.events or total <= 0:
        return
    shown = [
        f"{group} {1e6 * seconds / phase.events:,.0f}"
        for group, seconds in sorted(phase.thread_cpu_s.items(), key=lambda kv: -kv[1])
        if seconds >= 0.01 * total
    ]
    print(f"    CPU by thread from the service's start, µs per event: {', '.join(shown)}")


def _print_table(
    n: int,
    phases: list[Phase],
    upload_s: float | None,
    decode: dict[str, float] | None,
    multi: Sequence[WorkersRun] = (),
) -> None:
    ceiling = phases[0] if phases else None
    rows: list[tuple[str, str, str, str, str]] = [
        ("figure", "value", "wall s", "cores busy", "ratio")
    ]
    for phase in phases:
        ratio = (
            "1.00"
            if phase is ceiling
            else (f"{phase.rate / ceiling.rate:.3g} x ceiling" if ceiling and ceiling.rate else "-")
        )
        rows.append(
            (
                phase.name,
                f"{phase.rate:,.0f} ev/s",
                f"{phase.wall_s:.2f}",
                f"{phase.busy:.1f}",
                ratio,
            )
        )
    if len(phases) == 3 and phases[2].rate:
        rows.append(
            ("pipeline s3 / pipeline memory", "", "", "", f"{phases[1].rate / phases[2].rate:.3g}")
        )
    for run in multi:
        ratio = f"{run.rate / multi[0].rate:.2f} x 1 process" if run is not multi[0] else "1.00"
        rows.append(
            (
                f"pipeline, memory, {run.workers} worker process(es)",
                f"{run.rate:,.0f} ev/s",
                f"{run.active_s:.2f}",
                f"{run.busy:.1f}",
                ratio,
            )
        )
    if upload_s is not None:
        rows.append(
            ("moto S3 PUT (set-up)", f"{n / upload_s:,.0f} obj/s", f"{upload_s:.2f}", "", "")
        )
    if decode is not None:
        target = int(decode["target"])
        rows.append(("decode 12 MP JPEG, full", f"{decode['full_ms']:.1f} ms/img", "", "", ""))
        rows.append(
            (
                f"decode 12 MP JPEG, draft to {target}",
                f"{decode['draft_ms']:.1f} ms/img",
                "",
                "",
                f"{decode['speedup']:.1f}x faster",
            )
        )
        rows.append(
            (
                f"decode 12 MP JPEG, full then resize {target}",
                f"{decode['full_resize_ms']:.1f} ms/img",
                "",
                "",
                "",
            )
        )
    print()
    print(f"summary: {n} events, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images, {_cpu_line()}")
    print_rows(rows)


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events per run")
    parser.add_argument(
        "--decode-images", type=int, default=3, help="12 MP JPEGs for the decode part (0: skip)"
    )
    parser.add_argument("--no-s3", action="store_true", help="skip the moto-backed variant")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each measured run may take"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="also run the in-memory pipeline in 1 and in N worker processes, as "
        f"`moderator run --workers N` does, and print the gain (1..{MAX_BENCH_WORKERS}; "
        "default 0: skip)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        metavar="S",
        help="the interpreter's thread switch interval for this run (sys.setswitchinterval; "
        "default: Python's, 0.005)",
    )
    args = parser.parse_args(argv)
    n: int = args.events
    if n < 1:
        parser.error("--events must be at least 1")
    if args.switch_interval is not None:
        if args.switch_interval <= 0:
            parser.error("--switch-interval must be above 0")
        sys.setswitchinterval(args.switch_interval)
    if not 0 <= args.workers <= MAX_BENCH_WORKERS:
        parser.error(f"--workers must be between 0 and {MAX_BENCH_WORKERS}")

    run_id = uuid.uuid4().hex[:8]
    uploads = f"bench-uploads-{run_id}"
    print(
        f"moderator pipeline bench: {n} events, {_cpu_line()}, Python {sys.version.split()[0]}, "
        f"switch interval {sys.getswitchinterval()} s"
    )
    print(
        f"images: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG/PNG, all distinct: this measures the "
        "streaming path (Kafka, fetch, checkpoints), not decoding or inference"
    )
    started = time.perf_counter()
    images = _make_images(n)
    mean_bytes = statistics.mean(len(s.data) for s in images)
    print(
        f"generated {n} images ({mean_bytes:,.0f} B mean) in {time.perf_counter() - started:.1f} s"
    )

    phases: list[Phase] = []
    multi: list[WorkersRun] = []
    upload_s: float | None = None
    with (
        tempfile.TemporaryDirectory(prefix="moderator-bench-") as tmp,
        EmbeddedStack(buckets=(BUCKET,)) as stack,
    ):
        policies = _write_policies(Path(tmp))
        # The S3 adapter resolves credentials the standard AWS way.
        os.environ.update({k: v for k, v in stack.env().items() if k.startswith("AWS_")})
        print(f"embedded stack: kafka {stack.bootstrap_servers}, s3 {stack.s3_endpoint_url}")
        if not args.no_s3:
            upload_s = _upload(stack, images)
            print(f"uploaded {n} objects to moto in {upload_s:.1f} s ({n / upload_s:,.0f}/s)")
        _publish_events(stack.bootstrap_servers, uploads, run_id, images)
        print(f"published {n} UploadEvents to {uploads}")

        print("\n1. ceiling")
        phases.append(run_ceiling(stack.bootstrap_servers, uploads, n, run_id, args.timeout))
        _print_phase(phases[0], None)

        memory = InMemoryObjectStore()
        for i, sample in enumerate(images):
            memory.put(BUCKET, _object_key(i, sample), sample.data)
        settings = _pipeline_settings(
            stack.bootstrap_servers, policies, uploads, "s3", run_id, stack=stack
        )
        configure_logging(settings.log)
        if not args.no_s3:
            print("\n2a. pipeline, objects in moto S3")
            phases.append(run_pipeline(settings, "pipeline, S3 via moto", n, None, args.timeout))
            gc.collect()  # the service's clients sit in reference cycles: free them now
            _print_phase(phases[-1], phases[0])
        print("\n2b. pipeline, objects in memory")
        settings = _pipeline_settings(stack.bootstrap_servers, policies, uploads, "mem", run_id)
        phases.append(run_pipeline(settings, "pipeline, in-memory store", n, memory, args.timeout))
        gc.collect()  # ... before the stack and its broker go away
        _print_phase(phases[-1], phases[0])
        if args.workers:
            print(f"\n4. pipeline in worker processes (1 and {args.workers}), objects in memory")
            multi = _run_worker_phases(
                args.workers, stack.bootstrap_servers, policies, run_id, images, n, args.timeout
            )

    decode: dict[str, float] | None = None
    if args.decode_images > 0:
        print(f"\n3. decode ({args.decode_images} x 4000x3000 JPEG q90)")
        decode = run_decode_bench(args.decode_images, DECODE_TARGET)
        print(
            f"  full {decode['full_ms']:.1f} ms/image, draft {decode['draft_ms']:.1f} ms/image "
            f"({decode['speedup']:.1f}x), full+resize {decode['full_resize_ms']:.1f} ms/image; "
            f"{decode['mean_jpeg_mb']:.1f} MB mean"
        )

    _print_table(n, phases, upload_s, decode, multi)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    complete = all(p.events >= n for p in phases) and all(r.events >= n for r in multi)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
