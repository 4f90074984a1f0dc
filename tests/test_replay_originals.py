"""The originals a replay compares against: audit rows (stored or redacted), verdict messages.

`AuditOriginals` runs over a real SQLite audit store filled with the hand-made records of
`tests.audit_fixtures`; `TopicOriginals.read` runs over `FakeVerdictsLog`, a hand-written test
double of the few confluent-kafka Consumer calls it makes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

from moderator.audit.db.retention import redact_expired
from moderator.audit.db.store import AuditStore
from moderator.ingest.offsets import OffsetLookupError
from moderator.replay.compare import outcome_of
from moderator.replay.originals import KEPT, AuditOriginals, TopicOriginals, compact
from tests.audit_fixtures import ALPHA, BASE, BETA, fill, policy, record, sample_records

VERDICTS = "moderation.verdicts"
BY_ID = {doc["verdict"]["event_id"]: doc["verdict"] for doc in sample_records()}


def kept(verdict: dict[str, Any]) -> dict[str, Any]:
    return {k: verdict.get(k) for k in KEPT}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        fill(opened)
        yield opened


@pytest.fixture
def redacted(store: AuditStore) -> AuditStore:
    """The store after retention redacted every row (each was decided over a day ago)."""
    assert sum(redact_expired(store, {"default": 0}, BASE + timedelta(days=1)).values()) == 10
    return store


# -- the audit store ---------------------------------------------------------------------------


def test_source_names_the_store_dialect(store: AuditStore) -> None:
    assert AuditOriginals(store).source == "audit store (sqlite)"


@pytest.mark.parametrize("event_id", sorted(BY_ID))
def test_a_stored_record_gives_its_verdict_kept_fields(store: AuditStore, event_id: str) -> None:
    got = AuditOriginals(store).get(event_id)
    assert got == kept(BY_ID[event_id])
    assert got is not None and "timings_ms" not in got and "trace_id" not in got


def test_an_unknown_event_id_has_no_original(store: AuditStore) -> None:
    assert AuditOriginals(store).get("no-such-event") is None


def test_a_redacted_row_gives_its_verdict_from_the_columns(redacted: AuditStore) -> None:
    assert AuditOriginals(redacted).get("a-1") == {
        "event_id": "a-1",
        "tenant_id": ALPHA,
        "object": {"bucket": "uploads", "key": ""},  # redaction cleared the key
        "decision": "block",
        "assessment": {
            "rating": "Unsafe",
            "category": "O4: Nudity Content",
            "rationale": "",
            "score": 0.91,
        },
        "policy": {"tenant_id": ALPHA, "surface": "default", "version": policy(ALPHA).version},
        "model": {"engine": "fake", "name": "org/fake-guard"},
        "error": None,
    }


def test_a_redacted_error_row_has_its_error_code_and_no_assessment(redacted: AuditStore) -> None:
    got = AuditOriginals(redacted).get("b-2")
    assert got is not None
    assert (got["decision"], got["assessment"]) == ("review", None)
    assert got["error"] == {"code": "engine_timeout", "message": ""}
    assert got["policy"] == {
        "tenant_id": BETA,
        "surface": "default",
        "version": policy(BETA).version,
    }


@pytest.mark.parametrize("event_id", sorted(BY_ID))
def test_a_report_sees_the_same_outcome_before_and_after_redaction(
    redacted: AuditStore, event_id: str
) -> None:
    got = AuditOriginals(redacted).get(event_id)
    assert got is not None
    assert outcome_of(got) == outcome_of(BY_ID[event_id])
    assert (got["event_id"], got["tenant_id"]) == (event_id, BY_ID[event_id]["tenant_id"])


def test_an_unknown_event_id_has_no_original_after_redaction(redacted: AuditStore) -> None:
    assert AuditOriginals(redacted).get("no-such-event") is None


# -- compact -----------------------------------------------------------------------------------


def test_compact_keeps_only_what_a_comparison_needs() -> None:
    verdict = record("e-1", ALPHA, BASE, decision="block", category="O4: Nudity Content")["verdict"]
    got = compact(json.dumps(verdict).encode())
    assert got == kept(verdict) and tuple(got) == KEPT


def test_compact_fills_missing_kept_fields_with_none() -> None:
    got = compact(b'{"event_id": "e-1", "decision": "allow", "extra": [1, 2]}')
    assert got == {k: None for k in KEPT} | {"event_id": "e-1", "decision": "allow"}


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"event_id": "e-1"',
        b"[" * 100_000,  # nested deeper than the parser's recursion limit
        b'{"a":' * 100_000,
    ],
)
def test_compact_refuses_what_is_not_json(value: bytes) -> None:
    assert compact(value) is None


@pytest.mark.parametrize(
    "value", [b"null", b"1", b"1.5", b'"e-1"', b"true", b'["e-1"]', b'[{"event_id": "e-1"}]']
)
def test_compact_refuses_json_that_is_not_an_object(value: bytes) -> None:
    assert compact(value) is None


@pytest.mark.parametrize(
    "value", [b"{}", b'{"decision": "allow"}', b'{"event_id": null}', b'{"event_id": 7}']
)
def test_compact_refuses_an_object_without_a_text_event_id(value: bytes) -> None:
    assert compact(value) is None


# -- the verdicts topic ------------------------------------------------------------------------


def test_topic_originals_get_and_source() -> None:
    verdict = kept(BY_ID["a-0"])
    originals = TopicOriginals({"a-0": verdict}, VERDICTS)
    assert originals.source == f"topic {VERDICTS}"
    assert originals.get("a-0") == verdict
    assert originals.get("a-1") is None


class FakeMessage:
    """A delivered record (or, with `err`, a consumer error) as confluent-kafka shapes it."""

    def __init__(self, value: bytes | None, err: object = None) -> None:
        self._value, self._err = value, err

    def error(self) -> object:
        return self._err

    def value(self) -> bytes | None:
        return self._value


class FakeVerdictsLog:
    """Test double of a confluent-kafka consumer over one topic's fixed per-partition logs.

    `logs[p]` holds the messages at offsets `low[p]`, `low[p] + 1`, ... (offsets below `low[p]`
    are gone to retention). `consume` hands out at most `batch` messages per call, walking the
    assigned partitions in order; a partition's position is OFFSET_INVALID until first fetched,
    as librdkafka reports it. More than `max_consumes` calls fail the test instead of hanging it.
    """

    def __init__(
        self,
        topic: str,
        logs: dict[int, list[FakeMessage]],
        *,
        low: dict[int, int] | None = None,
        batch: int = 2,
        max_consumes: int = 100,
    ) -> None:
        self.topic, self.logs, self.batch, self.max_consumes = topic, logs, batch, max_consumes
        self.low = {p: (low or {}).get(p, 0) for p in logs}
        self.positions: dict[int, int] = {}
        self.fetched: set[int] = set()
        self.assigned: list[TopicPartition] | None = None
        self.consumes = 0
        self.unassigned = False

    def list_topics(self, topic: str, timeout: float = -1) -> Any:
        found = SimpleNamespace(error=None, partitions=dict.fromkeys(self.logs))
        return SimpleNamespace(topics={self.topic: found} if topic == self.topic else {})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1) -> tuple[int, int]:
        low = self.low[tp.partition]
        return low, low + len(self.logs[tp.partition])

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert all(tp.topic == self.topic for tp in partitions)
        self.assigned = list(partitions)
        self.positions = {
            tp.partition: self.low[tp.partition] if tp.offset == OFFSET_BEGINNING else tp.offset
            for tp in partitions
        }

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.consumes += 1
        assert self.consumes <= self.max_consumes, "read never finished"
        out: list[FakeMessage] = []
        for p in sorted(self.positions):
            self.fetched.add(p)
            end = self.low[p] + len(self.logs[p])
            while len(out) < min(num_messages, self.batch) and self.positions[p] < end:
                out.append(self.logs[p][self.positions[p] - self.low[p]])
                self.positions[p] += 1
        return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                self.topic,
                tp.partition,
                self.positions[tp.partition] if tp.partition in self.fetched else OFFSET_INVALID,
            )
            for tp in partitions
        ]

    def unassign(self) -> None:
        self.unassigned = True


def message(event_id: str, **fields: Any) -> FakeMessage:
    verdict = record(event_id, ALPHA, BASE, **fields)["verdict"]
    return FakeMessage(json.dumps(verdict).encode())


def test_read_keeps_the_last_verdict_of_each_event_and_skips_the_rest() -> None:
    logs = {
        0: [
            message("e-1", decision="allow"),
            FakeMessage(b"not a verdict"),
            message("e-2"),
            FakeMessage(b'{"schema": "something/else"}'),
            FakeMessage(None),  # a tombstone
            FakeMessage(b'{"event_id": "e-3"}', err="a consumer error"),
            message("e-1", decision="block", category="O4: Nudity Content"),
        ],
        1: [message("e-4", decision="review", error="engine_timeout", category=None)],
        2: [],
    }
    log = FakeVerdictsLog(VERDICTS, logs, low={1: 40, 2: 7})
    originals = TopicOriginals.read(log, VERDICTS, timeout_s=1.0)

    assert originals.source == f"topic {VERDICTS}"
    first = originals.get("e-1")
    assert first is not None and first["decision"] == "block"  # the later duplicate wins
    assert first == compact(logs[0][-1].value() or b"")
    assert originals.get("e-2") == compact(logs[0][2].value() or b"")
    error = originals.get("e-4")
    assert error is not None and error["error"] == {"code": "engine_timeout", "message": "boom"}
    assert originals.get("e-3") is None  # delivered only as an error
    # The empty partition is never assigned; the others from their earliest offset; then none.
    assert log.assigned is not None
    assert [(tp.partition, tp.offset) for tp in log.assigned] == [
        (0, OFFSET_BEGINNING),
        (1, OFFSET_BEGINNING),
    ]
    assert log.unassigned


def test_read_of_an_empty_topic_finds_nothing_without_consuming() -> None:
    log = FakeVerdictsLog(VERDICTS, {0: [], 1: []}, low={1: 12})
    originals = TopicOriginals.read(log, VERDICTS, timeout_s=1.0)
    assert originals.get("e-1") is None
    assert (log.assigned, log.consumes, log.unassigned) == ([], 0, True)


def test_read_unassigns_when_consuming_fails() -> None:
    log = FakeVerdictsLog(VERDICTS, {0: [message("e-1"), message("e-2")]}, max_consumes=0)
    with pytest.raises(AssertionError, match="never finished"):
        TopicOriginals.read(log, VERDICTS, timeout_s=1.0)
    assert log.unassigned


def test_read_of_a_missing_topic_says_so() -> None:
    log = FakeVerdictsLog("other", {0: [message("e-1")]})
    with pytest.raises(OffsetLookupError, match=f"partitions of {VERDICTS}: no such topic"):
        TopicOriginals.read(log, VERDICTS, timeout_s=1.0)
    assert log.assigned is None
