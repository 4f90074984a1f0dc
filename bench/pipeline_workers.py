"""The pipeline in several processes, as `moderator run --workers N` runs it: 1 process against
N, measured the same way in one run (`bench/pipeline.py --workers N`).

Each worker is a separate Python process (multiprocessing, spawn) running `run_service` with the
settings of `moderator.cli.workers.worker_settings(settings, k)`: its own instance id and
transactional id, one consumer group for all. The objects are in an InMemoryObjectStore in each
worker (loaded from files written by the bench), the engine is `fake` with zero latency, and
delivery is at_least_once (the mock broker cannot do exactly-once), as in the bench's in-memory
pipeline run.

Method, the same for 1 and for N workers: the workers start on a fresh, empty uploads topic
and join the group; once every worker holds partitions, the bench publishes the N events and
its reader waits for a verdict for each. "ev/s" is events over the time from the first event
published to the last verdict seen, so the group join is left out. "cores busy" is the CPU
time of the workers (each reports its own) over that time; the mock broker and the reader run
in the bench's own process and are not counted in it but do compete for the same cores. Use
at most as many workers as the uploads topic has partitions (4 on the mock cluster).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from moderator.settings import load_settings

if TYPE_CHECKING:
    from moderator.ingest.ports import Consumer as ConsumerPort

ASSIGN_TIMEOUT_S = 90.0
JOIN_S = 60.0


@dataclass
class WorkersRun:
    """One measured run of `workers` processes."""

    workers: int
    events: int = 0
    active_s: float = 0.0
    cpu_s: float = 0.0
    duplicates: int = 0
    notes: list[str] | None = None

    @property
    def rate(self) -> float:
        return self.events / self.active_s if self.active_s > 0 else 0.0

    @property
    def busy(self) -> float:
        return self.cpu_s / self.active_s if self.active_s > 0 else 0.0


class _ReportingConsumer(Consumer):
    """A Consumer that tells the bench when it holds partitions, and remembers the process's
    CPU time when consume() first returned a message."""

    report: Callable[[int], None] | None = None
    first_message_cpu: float | None = None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        messages: list[Any] = super().consume(num_messages, timeout)
        if messages and self.first_message_cpu is None:
            self.first_message_cpu = time.process_time()
        return messages

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[Consumer, list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[Consumer, list[TopicPartition]], None] | None = None,
        on_lost: Callable[[Consumer, list[TopicPartition]], None] | None = None,
    ) -> None:
        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if on_assign is not None:
                on_assign(consumer, partitions)
            if partitions and self.report is not None:
                self.report(len(partitions))

        callbacks = {"on_revoke": on_revoke, "on_lost": on_lost}
        super().subscribe(
            topics, on_assign=assigned, **{k: v for k, v in callbacks.items() if v is not None}
        )


def _worker(
    index: int,
    overrides: dict[str, Any],
    objects_file: str,
    events: Any,
    stop: Any,
) -> None:
    """One worker process: the service on worker k's settings until the bench says stop."""
    from moderator import heap
    from moderator.cli.workers import worker_settings
    from moderator.fetch.store import InMemoryObjectStore
    from moderator.ingest.kafka import consumer_config
    from moderator.logs import configure_logging
    from moderator.service import build_pipeline, run_service

    settings = worker_settings(load_settings(None, overrides), index)
    configure_logging(settings.log)
    store = InMemoryObjectStore()
    folder = Path(objects_file).parent
    for bucket, key, name in json.loads(Path(objects_file).read_text(encoding="utf-8")):
        store.put(bucket, key, (folder / name).read_bytes())
    consumer = _ReportingConsumer(consumer_config(settings))
    consumer.report = lambda n: events.put(("assigned", index, n, 0))
    halt = threading.Event()

    def relay() -> None:
        stop.wait()
        halt.set()

    threading.Thread(target=relay, daemon=True).start()
    try:
        pipeline = build_pipeline(settings, store=store)
        heap.settle()  # as each worker of `moderator run --workers N` does
        stats = run_service(
            settings,
            halt,
            pipeline=pipeline,
            consumer=cast("ConsumerPort", consumer),
        )
        first = consumer.first_message_cpu
        cpu = time.process_time() - first if first is not None else 0.0
        events.put(("done", index, cpu, stats.produced))
    except BaseException as exc:  # reported to the bench, which must not wait forever
        events.put(("failed", index, repr(exc), 0))


def run_workers(
    workers: int,
    *,
    overrides: dict[str, Any],
    objects: Sequence[tuple[str, str, bytes]],
    publish: Callable[[str], None],
    n: int,
    tmp: Path,
    timeout_s: float,
) -> WorkersRun:
    """`workers` processes on `overrides` (which name a fresh uploads topic); `publish(topic)`
    writes the n events once every worker holds partitions."""
    run = WorkersRun(workers, notes=[])
    assert run.notes is not None
    objects_file = _write_objects(tmp, objects)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    procs: list[SpawnProcess] = [
        ctx.Process(
            target=_worker,
            args=(k, overrides, str(objects_file), events, stop),
            name=f"bench-worker-{k}",
        )
        for k in range(workers)
    ]
    reader = _verdict_reader(overrides)
    cpu: dict[int, float] = {}
    try:
        for proc in procs:
            proc.start()
        _await_assignment(events, workers, procs)
        started = time.perf_counter()
        publish(overrides["kafka.topics.uploads"])
        seen, run.duplicates, last = _read_verdicts(reader, n, started + timeout_s)
        run.events = len(seen)
        run.active_s = (last or time.perf_counter()) - started
        if run.events < n:
            run.notes.append(f"TIMED OUT: only {run.events} of {n} events completed")
    finally:
        reader.close()
        stop.set()
        deadline = time.monotonic() + JOIN_S
        while len(cpu) < workers and time.monotonic() < deadline:
            try:
                kind, index, value, _ = events.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if kind == "done":
                cpu[index] = value
            elif kind == "failed":
                run.notes.append(f"worker {index} failed: {value}")
                cpu[index] = 0.0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                run.notes.append(f"{proc.name} did not stop")
    # Each worker's CPU from its first message to its stop: its idle polling after the last
    # verdict is in it, so this slightly overstates the CPU of the measured window.
    run.cpu_s = sum(cpu.values())
    return run


def _write_objects(tmp: Path, objects: Sequence[tuple[str, str, bytes]]) -> Path:
    """The objects as files under `tmp`, listed in objects.json (bucket, key, file name)."""
    manifest = tmp / "objects.json"
    if not manifest.exists():
        listing = []
        for i, (bucket, key, data) in enumerate(objects):
            (tmp / f"object-{i}").write_bytes(data)
            listing.append((bucket, key, f"object-{i}"))
        manifest.write_text(json.dumps(listing), encoding="utf-8")
    return manifest


def _await_assignment(events: Any, workers: int, procs: Sequence[SpawnProcess]) -> None:
    holding: set[int] = set()
    deadline = time.monotonic() + ASSIGN_TIMEOUT_S
    while len(holding) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(holding)} of {workers} workers got partitions")
        try:
            kind, index, value, _ = events.get(timeout=0.5)
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                raise RuntimeError("a bench worker exited before consuming") from None
            continue
        if kind == "assigned":
            holding.add(index)
        elif kind == "failed":
            raise RuntimeError(f"bench worker {index} failed: {value}")
    time.sleep(1.0)  # the last incremental rebalance settles


def _verdict_reader(overrides: dict[str, Any]) -> Consumer:
    topic = overrides["kafka.topics.verdicts"]
    reader = Consumer(
        {
            "bootstrap.servers": overrides["kafka.bootstrap_servers"],
            "group.id": f"{overrides['kafka.group_id']}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "allow.auto.create.topics": True,
            "fetch.wait.max.ms": 10,
        }
    )
    meta = reader.list_topics(topic=topic, timeout=10).topics[topic]
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)])
    return reader


def _read_verdicts(reader: Consumer, n: int, deadline: float) -> tuple[set[str], int, float | None]:
    seen: set[str] = set()
    duplicates = 0
    last: float | None = None
    while len(seen) < n and time.perf_counter() < deadline:
        for msg in reader.consume(500, 0.05):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reader: {err}")
                continue
            value = msg.value()
            if not value:
                continue
            event_id = json.loads(value)["event_id"]
            if event_id in seen:
                duplicates += 1
                continue
            seen.add(event_id)
            last = time.perf_counter()
    return seen, duplicates, last


def fresh_topic(bootstrap: str, topic: str) -> None:
    """Make the mock cluster create `topic` (it creates a topic a client asks about)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        meta = producer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} was not created")
