"""The consume loop's intake: every message ends as verdicts or one DLQ record, and its offset
is committed; no message stops the loop."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.emit.records import trace_from_headers
from moderator.errors import ErrorCode
from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.memory.messages import StoredRecord
from tests.fuzz import fuzz_settings
from tests.harness import Instance, png, settings_for, wait_for, write_policies
from tests.messages import BUCKET, STORED_KEYS, header_lists, message_keys, message_values

PARTITIONS = 2
_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
Coords = tuple[int, int]


class World:
    """One running loop (real pipeline, fake engine) over an in-memory broker and store."""

    def __init__(self, policies: Path) -> None:
        self.broker = MemoryBroker(default_partitions=PARTITIONS)
        store = InMemoryObjectStore()
        for i, key in enumerate(STORED_KEYS):
            store.put(BUCKET, key, png(i))
        self.inst = Instance(self.broker, store, settings_for(policies)).start()
        self.reader = self.broker.consumer(
            {
                "group.id": "reader",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        self.reader.subscribe(["moderation.verdicts", "moderation.audit", "moderation.dlq"])
        self.found: dict[Coords, Counter[str]] = {}
        self.verdict_ids: Counter[str] = Counter()
        self.audit_ids: Counter[str] = Counter()

    def send(self, value: Any, key: Any = None, headers: Any = None) -> StoredRecord:
        return self.broker.produce_plain("uploads", value, key=key, headers=headers)

    def settle(self, timeout: float = 30) -> None:
        """Wait until every offset is committed; fail at once if the loop died."""

        def done() -> bool:
            assert self.inst.error is None, repr(self.inst.error)
            assert self.inst.thread.is_alive(), "the loop stopped"
            return all(
                self.broker.committed_offset("g", "uploads", p)
                == (self.broker.end_offset("uploads", p) or None)
                for p in range(PARTITIONS)
            )

        wait_for(done, timeout, "every offset committed")

    def outputs(self) -> dict[Coords, Counter[str]]:
        """Verdicts and DLQ records per input message, by (partition, offset), so far."""
        while batch := self.reader.consume(500, 0):
            for msg in batch:
                self._count(msg.topic(), msg.value(), msg.headers())
        assert self.verdict_ids == self.audit_ids
        return self.found

    def _count(self, topic: str, value: bytes | None, headers: Any) -> None:
        if topic == "moderation.verdicts":
            self.verdict_ids[json.loads(value or b"{}")["event_id"]] += 1
        elif topic == "moderation.audit":
            audit = json.loads(value or b"{}")
            self.audit_ids[audit["verdict"]["event_id"]] += 1
            where = (audit["input"]["partition"], audit["input"]["offset"])
            self.found.setdefault(where, Counter())["verdict"] += 1
        else:
            named = dict(headers or [])
            assert named["moderator.error.code"] == ErrorCode.MALFORMED_EVENT.value.encode()
            reason = named["moderator.error.message"].decode()
            assert reason and reason.isprintable(), reason
            where = (
                int(named["moderator.source.partition"]),
                int(named["moderator.source.offset"]),
            )
            self.found.setdefault(where, Counter())["dlq"] += 1


def expected(value: Any) -> Counter[str]:
    """What one message must produce: a verdict per event, or one DLQ record."""
    try:
        parsed = parse_message(value, TenantRule())
    except MalformedMessage:
        return Counter(dlq=1)
    return Counter(verdict=len(parsed.events))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(write_policies(tmp_path))
    yield w
    w.inst.shutdown()
    assert w.inst.error is None


def _event(event_id: str, key: str = STORED_KEYS[0]) -> bytes:
    doc = {"event_id": event_id, "tenant_id": "acme", "object": {"bucket": BUCKET, "key": key}}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 5000,
        b'{"event_id": "e", "ignored": 1' + b"0" * 5000 + b"}",
    ],
    ids=["nested-5000", "int-5001-digits"],
)
def test_reported_inputs_are_dead_lettered_and_the_loop_goes_on(world: World, value: bytes) -> None:
    bad = world.send(value, b"k")
    good = world.send(_event("after-bad"), b"k")  # same key: same partition, later offset
    world.settle()
    found = world.outputs()
    assert found[(bad.partition, bad.offset)] == Counter(dlq=1)
    assert found[(good.partition, good.offset)] == Counter(verdict=1)
    (dlq,) = world.broker.records("moderation.dlq")
    assert dlq.value == value and dlq.key == b"k"


def test_trace_from_headers_ignores_what_is_not_a_valid_traceparent() -> None:
    derived = trace_from_headers(None, "e1")
    for headers in (
        [("traceparent", None)],
        [("traceparent", 5)],
        [(b"traceparent", _TRACE.encode())],
        [("traceparent",)],
        {"traceparent": _TRACE.encode()},
        [("traceparent", f"00-{'a' * 32}-{'0' * 16}-01".encode())],  # all-zero parent span
        [("traceparent", b"\xff" * 55)],
    ):
        assert trace_from_headers(headers, "e1") == derived, headers
    for value in (_TRACE, _TRACE.encode(), b" " + _TRACE.upper().encode() + b"\r\n"):
        trace = trace_from_headers([("x", b""), ("TraceParent", value)], "e1")
        assert (trace.trace_id, trace.parent_span) == tuple(_TRACE.split("-")[1:3])


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],  # str
        [("traceparent", None), ("traceparent", b"\xff\xfe")],
        [("traceparent", 5)],
        [(b"traceparent", b"x")],
        [("traceparent",)],
        {"traceparent": b"x"},
    ],
    ids=["str-value", "none-and-garbage", "int-value", "bytes-name", "short-tuple", "dict"],
)
def test_headers_of_odd_types_do_not_stop_the_loop(world: World, headers: Any) -> None:
    rec = world.send(_event("odd-headers"), b"k", headers)
    world.settle()
    assert world.outputs()[(rec.partition, rec.offset)] == Counter(verdict=1)


def test_a_failure_while_accepting_is_dead_lettered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in parsing or job creation dead-letters the message instead of stopping the loop."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr("moderator.ingest.loop.trace_from_headers", broken)
    rec = world.send(_event("bug"), b"k")
    world.settle()
    assert world.outputs()[(rec.partition, rec.offset)] == Counter(dlq=1)
    (dlq,) = world.broker.records("moderation.dlq")
    assert b"KeyError" in dict(dlq.headers or [])["moderator.error.message"]
    monkeypatch.undo()
    after = world.send(_event("after-bug"), b"k")
    world.settle()
    assert world.outputs()[(after.partition, after.offset)] == Counter(verdict=1)


@pytest.mark.fuzz
def test_every_message_ends_as_verdicts_or_one_dlq_record(tmp_path: Path) -> None:
    """Batches of random, valid, mutated and hostile messages with random keys and headers
    (garbage traceparents included) go through the real loop: each ends as one verdict per
    event or as one DLQ record, nothing else, and every offset is committed (default 25 batches,
    about 3 s)."""
    world = World(write_policies(tmp_path))
    try:

        @fuzz_settings(25)
        @given(st.lists(st.tuples(message_values, message_keys, header_lists), max_size=6))
        def check(batch: list[tuple[Any, Any, Any]]) -> None:
            sent = [(world.send(*message), message[0]) for message in batch]
            world.settle()
            found = world.outputs()
            for rec, value in sent:
                want = expected(value)
                assert found.get((rec.partition, rec.offset), Counter()) == +want, value

        check()
    finally:
        world.inst.shutdown()
    assert world.inst.error is None
