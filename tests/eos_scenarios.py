"""Exactly-once scenarios written once and run against two brokers: the in-memory fake (here, in
the unit tier) and a real Apache Kafka (integration/eos_kafka.py's KafkaWorld).

A scenario drives real IngestLoops and processors through a `World` (topics, clients, what a
read_committed reader sees) and returns the `Outcome` a user could observe: the verdict and
audit event ids per output partition, the dead letters and the group's committed offsets. The
crash is injected the same way in both worlds: a producer wrapper that raises SimulatedCrash at
the nth call of one checkpoint step, after which the "dead" instance runs no further callback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from moderator.emit.records import OutRecord
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest import checkpoint as checkpoint_module
from moderator.ingest import loop as loop_module
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.ports import Consumer, Producer
from moderator.ingest.tracker import TP, Ready
from moderator.service import Pipeline, build_pipeline
from moderator.settings import Settings, load_settings
from tests.harness import BUCKET, TENANTS, png

PARTITIONS = 4
CRASH_POINTS = (
    "begin_transaction",
    "produce",  # crash before produce (the nth record of a checkpoint)
    "send_offsets_to_transaction",  # between produce and offsets
    "commit_transaction",  # before commit
    "after_commit_transaction",  # after the commit took effect
)


class ObjectSink(Protocol):
    """Where seed() puts the uploaded objects: an InMemoryObjectStore, or an S3 bucket."""

    def put(self, bucket: str, key: str, data: bytes) -> None: ...


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this point runs."""


# -- the broker under test -------------------------------------------------------------------


class World(Protocol):
    """A broker, its clients, and a read_committed view of what it holds."""

    partitions: int

    def settings(self) -> dict[str, Any]: ...
    def create_topics(self, names: Sequence[str]) -> None: ...
    def produce_inputs(self, topic: str, messages: Sequence[tuple[int, bytes, bytes]]) -> None: ...
    def consumer(self, config: dict[str, Any]) -> Consumer: ...
    def producer(self, config: dict[str, Any]) -> Producer: ...
    def read(self, topics: Sequence[str]) -> dict[str, list[tuple[int, bytes]]]: ...
    def committed(
        self, group: str, topic: str, *, stable: bool = True
    ) -> dict[int, int | None]: ...
    def ends(self, topic: str) -> dict[int, int]: ...


class MemoryWorld:
    """The in-memory transactional broker."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.broker = MemoryBroker(default_partitions=partitions)

    def settings(self) -> dict[str, Any]:
        return {}

    def create_topics(self, names: Sequence[str]) -> None:
        for name in names:
            self.broker.create_topic(name, self.partitions)

    def produce_inputs(self, topic: str, messages: Sequence[tuple[int, bytes, bytes]]) -> None:
        for partition, key, value in messages:
            self.broker.produce_plain(topic, value, key=key, partition=partition)

    def consumer(self, config: dict[str, Any]) -> Consumer:
        return self.broker.consumer(config)

    def producer(self, config: dict[str, Any]) -> Producer:
        return self.broker.producer(config)

    def read(self, topics: Sequence[str]) -> dict[str, list[tuple[int, bytes]]]:
        return {t: [(r.partition, r.value or b"") for r in self.broker.records(t)] for t in topics}

    def committed(self, group: str, topic: str, *, stable: bool = True) -> dict[int, int | None]:
        return {p: self.broker.committed_offset(group, topic, p) for p in range(self.partitions)}

    def ends(self, topic: str) -> dict[int, int]:
        return {p: self.broker.end_offset(topic, p) for p in range(self.partitions)}


@dataclass(frozen=True)
class Names:
    """Topics and group of one scenario run, unique per run."""

    uploads: str
    verdicts: str
    audit: str
    dlq: str
    group: str

    @classmethod
    def unique(cls, tag: str = "eos") -> Names:
        run = f"{tag}-{uuid.uuid4().hex[:10]}"
        return cls(f"up-{run}", f"ver-{run}", f"aud-{run}", f"dlq-{run}", f"g-{run}")

    def settings(self) -> dict[str, Any]:
        return {
            "kafka.topics.uploads": self.uploads,
            "kafka.topics.verdicts": self.verdicts,
            "kafka.topics.audit": self.audit,
            "kafka.topics.dlq": self.dlq,
            "kafka.group_id": self.group,
        }

    def env(self) -> dict[str, str]:
        """`settings` as the environment of a `moderator` process."""
        return {f"MODERATOR_{k.upper().replace('.', '__')}": v for k, v in self.settings().items()}

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.uploads, self.verdicts, self.audit, self.dlq)


def eos_settings(world: World, names: Names, policies: Path, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "engine.kind": "fake",
        "engine.max_wait_ms": 2,
        "engine.batch_size": 16,
        "kafka.delivery": "exactly_once",
        "kafka.commit_interval_ms": 50,
        "instance_id": "eos-0",
        "policies.dir": policies,
        "flow.drain_grace_s": 5,
        "fetch.concurrency": 4,
        **names.settings(),
        **world.settings(),
    }
    values.update(over)
    return load_settings(overrides=values)


# -- instances and the injected crash --------------------------------------------------------


class CrashingProducer:
    """A producer that dies (SimulatedCrash) at the nth call of one checkpoint step."""

    def __init__(self, inner: Producer, crash: tuple[str, int] | None = None) -> None:
        if crash is not None and crash[0] not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {crash[0]!r}")
        self.inner = inner
        self._point, self._left = crash if crash is not None else ("", 0)

    def _reach(self, point: str) -> None:
        if point == self._point:
            self._left -= 1
            if self._left == 0:
                raise SimulatedCrash(point)

    def init_transactions(self, timeout: float = -1) -> None:
        self.inner.init_transactions(timeout)

    def begin_transaction(self) -> None:
        self._reach("begin_transaction")
        self.inner.begin_transaction()

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self._reach("produce")
        self.inner.produce(topic, *args, **kwargs)

    def send_offsets_to_transaction(
        self, positions: Sequence[Any], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._reach("send_offsets_to_transaction")
        self.inner.send_offsets_to_transaction(positions, group_metadata, timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._reach("commit_transaction")
        self.inner.commit_transaction(timeout)
        self._reach("after_commit_transaction")

    def abort_transaction(self, timeout: float = -1) -> None:
        self.inner.abort_transaction(timeout)

    def flush(self, timeout: float = -1) -> int:
        return self.inner.flush(timeout)

    def poll(self, timeout: float = -1) -> int:
        return self.inner.poll(timeout)


class MortalConsumer:
    """A consumer whose rebalance callbacks stop running once its process has died, so closing
    it only leaves the group (as the session timeout would): no checkpoint on the way out.

    `owned` is what it was last assigned, readable from other threads (librdkafka's
    assignment() may block while another thread is inside consume()).
    """

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner
        self.dead = False
        self.owned: frozenset[tuple[str, int]] = frozenset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _guard(
        self, callback: Callable[[Any, list[Any]], None], *, assigning: bool
    ) -> Callable[[Any, list[Any]], None]:
        def call(consumer: Any, partitions: list[Any]) -> None:
            tps = {(p.topic, p.partition) for p in partitions}
            self.owned = self.owned | tps if assigning else self.owned - tps
            if not self.dead:
                callback(consumer, partitions)

        return call

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[Any, list[Any]], None] | None = None,
        on_revoke: Callable[[Any, list[Any]], None] | None = None,
        on_lost: Callable[[Any, list[Any]], None] | None = None,
    ) -> None:
        assert on_assign and on_revoke and on_lost, "the loop sets every rebalance callback"
        self.inner.subscribe(
            topics,
            on_assign=self._guard(on_assign, assigning=True),
            on_revoke=self._guard(on_revoke, assigning=False),
            on_lost=self._guard(on_lost, assigning=False),
        )

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        return self.inner.consume(num_messages, timeout)


class Instance:
    """One moderator process: its own consumer, producer, pipeline and loop thread."""

    def __init__(
        self,
        world: World,
        store: InMemoryObjectStore,
        settings: Settings,
        *,
        crash: tuple[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = MortalConsumer(world.consumer(consumer_config(settings)))
        self.producer = CrashingProducer(world.producer(producer_config(settings)), crash)
        self.pipeline: Pipeline = build_pipeline(settings, store=store)
        self.loop = IngestLoop(
            settings=settings,
            consumer=self.consumer,  # delegates the rest of the port to the real consumer
            producer=self.producer,
            processor=self.pipeline.processor,
            # as the service does: a producer whose call got stuck is replaced (stuck.py)
            renew_producer=lambda: world.producer(producer_config(settings)),
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run(self.stop)
        except BaseException as exc:  # the test inspects it: a crash or a fatal error
            self.error = exc
            self.consumer.dead = isinstance(exc, SimulatedCrash)
        try:
            self.consumer.close()  # as run_service does, even after a fatal error
        except BaseException as exc:  # a checkpoint in the last revoke failed
            self.error = self.error or exc
        finally:
            self.pipeline.close()

    def start(self) -> Instance:
        self.thread.start()
        return self

    def where(self) -> str:
        """The loop thread's stack now: where a stuck instance waits, for a failure message."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        if frame is None:
            return "the loop thread is not running"
        return "the loop thread is at:\n" + "".join(traceback.format_stack(frame)[-8:])

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the instance did not stop"

    def shutdown(self, timeout: float = 30) -> None:
        self.stop.set()
        self.join(timeout)


# -- inputs and outcomes ---------------------------------------------------------------------


def seed(
    world: World,
    store: ObjectSink,
    names: Names,
    n: int,
    *,
    malformed_every: int = 0,
    start: int = 0,
) -> tuple[set[str], int]:
    """n upload messages, round-robin over the partitions; returns (event ids, malformed count)."""
    ids: set[str] = set()
    malformed = 0
    messages: list[tuple[int, bytes, bytes]] = []
    for i in range(start, start + n):
        partition = i % world.partitions
        if malformed_every and i % malformed_every == malformed_every - 1:
            messages.append((partition, b"bad", b'{"event_id": '))
            malformed += 1
            continue
        tenant = TENANTS[i % len(TENANTS)]
        key = f"{tenant}/img-{i}.png"
        store.put(BUCKET, key, png(i))
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
        }
        messages.append((partition, tenant.encode(), json.dumps(event).encode()))
        ids.add(f"ev-{i}")
    world.produce_inputs(names.uploads, messages)
    return ids, malformed


@dataclass(frozen=True)
class Outcome:
    """What a read_committed reader and the group's committed offsets show after a run."""

    verdicts: dict[int, list[str]]  # output partition -> event ids, sorted
    audits: dict[int, list[str]]
    dead_letters: dict[int, int]
    committed: dict[int, int | None]  # input partition -> committed next offset
    ends: dict[int, int]  # input partition -> end offset

    def verdict_counts(self) -> Counter[str]:
        return Counter(e for ids in self.verdicts.values() for e in ids)

    def audit_counts(self) -> Counter[str]:
        return Counter(e for ids in self.audits.values() for e in ids)

    def comparable(self) -> dict[str, Any]:
        """Everything but empty partitions, for comparing two worlds."""
        return {
            "verdicts": {p: v for p, v in self.verdicts.items() if v},
            "audits": {p: v for p, v in self.audits.items() if v},
            "dead_letters": {p: n for p, n in self.dead_letters.items() if n},
            "committed": self.committed,
        }


def _by_partition(
    records: list[tuple[int, bytes]], event_id: Callable[[dict[str, Any]], str]
) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for partition, value in records:
        out.setdefault(partition, []).append(event_id(json.loads(value)))
    return {p: sorted(ids) for p, ids in sorted(out.items())}


def outcome(world: World, names: Names) -> Outcome:
    read = world.read([names.verdicts, names.audit, names.dlq])
    dlq: Counter[int] = Counter(p for p, _ in read[names.dlq])
    return Outcome(
        verdicts=_by_partition(read[names.verdicts], lambda d: str(d["event_id"])),
        audits=_by_partition(read[names.audit], lambda d: str(d["verdict"]["event_id"])),
        dead_letters=dict(sorted(dlq.items())),
        committed=world.committed(names.group, names.uploads),
        ends=world.ends(names.uploads),
    )


def finished(world: World, names: Names) -> bool:
    """Every input offset committed (in exactly-once mode: with its outputs)."""
    try:
        committed = world.committed(names.group, names.uploads)
        ends = world.ends(names.uploads)
    except Exception:  # offsets of an open transaction are not readable yet, or a node is down
        return False
    return all(committed.get(p) == (end or None) for p, end in ends.items())


def progress(world: World, names: Names) -> int:
    """Input messages committed so far, over all partitions (offsets a transaction still holds
    pending are not counted)."""
    try:
        committed = world.committed(names.group, names.uploads, stable=False)
        return sum(o or 0 for o in committed.values())
    except Exception:
        return 0


def wait_for(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    why: Callable[[], object] | None = None,
) -> None:
    """Poll `cond` until it holds; AssertionError naming `what` (and `why()`) on timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            detail = f": {why()}" if why is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(0.05)


def exactly_once_problems(result: Outcome, ids: set[str], malformed: int) -> list[str]:
    """Every way `result` differs from exactly one verdict and audit record per event, the
    malformed messages dead-lettered once, and every input offset committed; [] when none."""
    problems: list[str] = []
    verdicts, audits = result.verdict_counts(), result.audit_counts()
    lost = sorted(ids - set(verdicts))
    repeated = sorted(e for e, n in verdicts.items() if n > 1)
    if lost:
        problems.append(f"{len(lost)} events without a verdict, e.g. {lost[:5]}")
    if repeated:
        problems.append(f"{len(repeated)} events with several verdicts, e.g. {repeated[:5]}")
    if set(verdicts) - ids:
        problems.append(f"unexpected verdicts {sorted(set(verdicts) - ids)[:5]}")
    if audits != verdicts:
        problems.append(f"audit records differ from verdicts: {(audits - verdicts) or audits}")
    if sum(result.dead_letters.values()) != malformed:
        problems.append(f"{sum(result.dead_letters.values())} dead letters, not {malformed}")
    want = {p: end or None for p, end in result.ends.items()}
    if result.committed != want:
        problems.append(f"committed offsets {result.committed}, end offsets {want}")
    return problems


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Run:
    """A scenario's result: its outcome and what it expected."""

    outcome: Outcome
    ids: set[str]
    malformed: int
    instances: list[Instance]

    def problems(self) -> list[str]:
        return exactly_once_problems(self.outcome, self.ids, self.malformed)


def crash_then_restart(
    world: World,
    policies: Path,
    point: str,
    nth: int,
    *,
    events: int = 160,
    timeout: float = 60,
    **over: Any,
) -> Run:
    """An instance dies at the nth call of `point`; a new one with the same transactional id
    takes over and finishes."""
    store, names = InMemoryObjectStore(), Names.unique("crash")
    world.create_topics(names.topics)
    ids, malformed = seed(world, store, names, events, malformed_every=9)
    settings = eos_settings(
        world,
        names,
        policies,
        **{
            "kafka.commit_max_events": 10,
            "kafka.commit_interval_ms": 300,
            "flow.poll_batch": 4,
            # a real consumer hands out its whole prefetch at once: a slower engine spreads the
            # completions over many checkpoints, so that the nth one exists
            "engine.fake.latency_ms": 10,
            "engine.batch_size": 4,
            **over,
        },
    )
    first = Instance(world, store, settings, crash=(point, nth)).start()
    first.join(timeout)
    assert isinstance(first.error, SimulatedCrash), first.error
    if point != "after_commit_transaction":  # that crash may follow the final commit
        assert not finished(world, names), "the crash came after all the work"
    second = Instance(world, store, settings).start()
    wait_for(lambda: finished(world, names), timeout, "every offset committed after the restart")
    second.shutdown()
    assert second.error is None, second.error
    return Run(outcome(world, names), ids, malformed, [first, second])


def fenced_zombie(world: World, policies: Path, *, timeout: float = 60, **over: Any) -> Run:
    """A second instance with the first one's transactional id fences it: the first stops with
    FatalKafkaError at its next transaction, the second finishes every event once."""
    store, names = InMemoryObjectStore(), Names.unique("zombie")
    world.create_topics(names.topics)
    ids, malformed = seed(world, store, names, 20)
    settings = eos_settings(world, names, policies, **over)
    zombie = Instance(world, store, settings).start()
    wait_for(lambda: finished(world, names), timeout, "the first instance's verdicts")
    successor = Instance(world, store, settings).start()
    wait_for(lambda: bool(successor.consumer.owned), timeout, "the successor to join")
    more, _ = seed(world, store, names, 40, start=20)
    zombie.join(timeout)
    wait_for(lambda: finished(world, names), timeout, "the successor's verdicts")
    successor.shutdown()
    assert successor.error is None, successor.error
    return Run(outcome(world, names), ids | more, malformed, [zombie, successor])


def _owns_partitions(instance: Instance) -> bool:
    return bool(instance.consumer.owned)


def rebalance(
    world: World,
    policies: Path,
    members: int,
    *,
    events: int = 400,
    timeout: float = 90,
    **over: Any,
) -> Run:
    """Members join one by one mid-stream, then all but the last leave mid-stream: each join
    and leave moves partitions, with their in-flight work, between members."""
    store, names = InMemoryObjectStore(), Names.unique(f"rebal{members}")
    world.create_topics(names.topics)
    ids, malformed = seed(world, store, names, events, malformed_every=11)
    # About 100 events/s per member: every change lands while work is in flight. A member holds
    # at most 16 events: the partitions advance together, so each change moves work that is
    # left, and a leaving member drains its 16, not the rest of its partitions (which would
    # leave the members after it nothing to commit).
    slow = {
        "engine.fake.latency_ms": 40,
        "engine.batch_size": 4,
        "flow.poll_batch": 8,
        "flow.high_in_flight": 16,
        "flow.low_in_flight": 4,
        **over,
    }
    changes = 2 * (members - 1)
    marks = iter(events * (k + 1) // (changes + 2) for k in range(changes))

    def settle(what: str) -> None:
        mark = next(marks)
        wait_for(lambda: progress(world, names) >= mark, timeout, f"{mark} committed {what}")

    running = [
        Instance(world, store, eos_settings(world, names, policies, instance_id="m0", **slow))
    ]
    running[0].start()
    for member in range(1, members):
        settle(f"before m{member} joins")
        joining = Instance(
            world, store, eos_settings(world, names, policies, instance_id=f"m{member}", **slow)
        ).start()
        running.append(joining)
        wait_for(partial(_owns_partitions, joining), timeout, f"m{member}'s partitions")
    for leaving in running[:-1]:
        settle("before a member leaves")
        leaving.shutdown()  # revokes mid-stream: the rest take over from the committed offsets
    wait_for(lambda: finished(world, names), timeout, "every offset committed")
    running[-1].shutdown()
    assert [i.error for i in running] == [None] * members, [i.error for i in running]
    return Run(outcome(world, names), ids, malformed, running)


# -- a deliberately broken checkpoint --------------------------------------------------------


def broken_commit_checkpoint(
    producer: Producer,
    consumer: Consumer,
    ready: Mapping[TP, Ready[OutRecord]],
    *,
    exactly_once: bool,
    timeout_s: float,
    tracer: Any = None,
) -> int:
    """The checkpoint with its classic bug: the offsets are committed by the consumer, outside
    the transaction, before the outputs are. A crash in between loses those events."""
    offsets = [TopicPartition(t, p, r.next_offset) for (t, p), r in ready.items()]
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:  # handled like any failed checkpoint: rewind, try again
        raise checkpoint_module.CheckpointAborted(f"checkpoint aborted: {exc}") from exc
    return checkpoint_module.commit_checkpoint(
        producer, consumer, ready, exactly_once=exactly_once, timeout_s=timeout_s
    )


def break_checkpoint() -> Callable[[], None]:
    """Make every IngestLoop of this process use broken_commit_checkpoint; returns the undo."""
    names = vars(loop_module)  # the loop calls the checkpoint through its module's globals
    original = names["commit_checkpoint"]
    names["commit_checkpoint"] = broken_commit_checkpoint

    def undo() -> None:
        names["commit_checkpoint"] = original

    return undo


def checkpoint_is_broken() -> bool:
    return vars(loop_module)["commit_checkpoint"] is broken_commit_checkpoint
