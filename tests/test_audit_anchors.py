"""Anchors (JSON, file, Kafka, S3 URI, settings), the pure chain walk and audit URLs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.chain.canonical import GENESIS_HASH, link_hash, record_hash
from moderator.audit.db.connect import normalize_url
from moderator.audit.errors import AuditError, InvalidQuery
from moderator.audit.fields import RecordFields
from moderator.audit.integrity.anchors import (
    ANCHOR_KEY,
    FileAnchorSink,
    KafkaAnchorSink,
    S3AnchorSink,
    latest_anchor,
    parse_s3_uri,
    read_latest,
    sinks_from_settings,
)
from moderator.audit.integrity.verify import check_chain
from moderator.audit.models import Anchor, AuditQuery, ChainHead, ChainRow
from moderator.errors import ConfigError
from moderator.settings import AuditSettings

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def anchor(n: int) -> Anchor:
    heads = (
        ChainHead("moderation.audit", 1, n, f"{n:064x}"),
        ChainHead("moderation.audit", 0, n, "a" * 64),
    )
    return Anchor(created_at=T0 + timedelta(minutes=n), heads=heads)


def test_anchor_json_round_trip() -> None:
    a = anchor(3)
    doc = a.to_json()
    assert (
        doc["schema"] == "moderator.audit-anchor/v1" and doc["created_at"] == "2026-11-29T02:03:00Z"
    )
    assert [h["partition"] for h in doc["heads"]] == [0, 1]  # sorted
    assert Anchor.from_bytes(a.to_bytes()) == replace(a, heads=tuple(sorted(a.heads)))
    for bad in (b"{}", b"[]", b'{"schema": "moderator.audit-anchor/v1"}', b"nope"):
        with pytest.raises(ValueError):
            Anchor.from_bytes(bad)


def test_file_sink_appends_and_latest_reads_from_the_end(tmp_path: Path) -> None:
    sink = FileAnchorSink(tmp_path / "a" / "anchors.jsonl")
    assert latest_anchor(sink.path) is None
    for n in range(1, 40):
        sink.write(anchor(n))
    assert sink.path.read_bytes().count(b"\n") == 39
    want = Anchor.from_bytes(anchor(39).to_bytes())
    assert latest_anchor(sink.path) == want
    assert latest_anchor(sink.path, block=7) == want  # lines spanning read blocks
    with sink.path.open("ab") as out:
        out.write(b'{"schema": "moderator.audit-anch')  # a torn write at the end
    assert latest_anchor(sink.path, block=16) == want
    assert read_latest(sink.path, block=16) == (want, 1)  # and verify says it skipped one
    with sink.path.open("ab") as out:
        out.write(b'\n{"bad": 1}\n\n')
    assert read_latest(sink.path) == (want, 2)
    assert sink.destination == f"file:{sink.path}"


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, bytes]] = []
        self._callbacks: list[Any] = []

    def produce(self, topic: str, *, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, value))
        self._callbacks.append(on_delivery)

    def flush(self, timeout: float) -> int:
        for callback in self._callbacks:
            callback("broker down" if self.fail else None, None)
        self._callbacks.clear()
        return 0


def test_kafka_sink_produces_keyed_json_and_waits() -> None:
    producer = FakeProducer()
    KafkaAnchorSink(producer, "audit.anchors").write(anchor(2))
    [(topic, key, value)] = producer.sent
    assert (topic, key) == ("audit.anchors", ANCHOR_KEY) and Anchor.from_bytes(value).heads
    with pytest.raises(AuditError, match="broker down"):
        KafkaAnchorSink(FakeProducer(fail=True), "audit.anchors").write(anchor(2))


def test_s3_keys_sort_by_time() -> None:
    sink = S3AnchorSink(client=None, bucket="b", prefix="/audit/anchors/")
    keys = [sink.key(anchor(n)) for n in (1, 2, 10, 100)]
    assert keys == sorted(keys)
    assert keys[0].startswith("audit/anchors/2026/11/29/20261129T020100.000000Z-")
    assert sink.destination == "s3://b/audit/anchors"


def test_s3_uri_and_settings() -> None:
    assert parse_s3_uri("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ConfigError):
        parse_s3_uri("https://bucket/x")
    settings = AuditSettings(
        anchor_file=Path("/tmp/a.jsonl"), anchor_s3_uri="s3://b/p", anchor_topic="t"
    )
    sinks = sinks_from_settings(settings, s3_client=object(), producer=FakeProducer())
    assert [s.destination for s in sinks] == ["file:/tmp/a.jsonl", "s3://b/p", "kafka:t"]
    with pytest.raises(ConfigError, match="S3 client"):
        sinks_from_settings(settings)
    assert sinks_from_settings(AuditSettings()) == []


def test_audit_settings_defaults_and_checks() -> None:
    s = AuditSettings()
    assert (s.retention_days, s.anchor_every_s, s.batch_size) == ({}, 60.0, 500)
    assert AuditSettings(retention_days={"default": 30, "kids": 7}).retention_days["kids"] == 7
    with pytest.raises(ValueError, match="retention_days"):
        AuditSettings(retention_days={"kids": -1})
    with pytest.raises(ValueError, match="anchor_s3_uri"):
        AuditSettings(anchor_s3_uri="bucket/prefix")


def test_audit_urls() -> None:
    pg = normalize_url("postgresql://u:pw@db:5432/audit")
    assert pg.drivername == "postgresql+psycopg" and pg.database == "audit"
    assert normalize_url("postgres://u@db/audit").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@db/audit").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x/audit.db").database == "x/audit.db"
    for bad in ("mysql://u@db/audit", "postgresql+psycopg2://u@db/a", "not a url"):
        with pytest.raises(ConfigError, match=r"audit\.url"):
            normalize_url(bad)


def test_query_limits() -> None:
    assert AuditQuery().limit == 100 and AuditQuery().sort == "-decided_at"
    for bad in (
        {"limit": 0},
        {"limit": 1001},
        {"sort": "id"},
        {"since": datetime(2026, 1, 1)},  # noqa: DTZ001 (naive on purpose: refused)
        {"model": ":x"},
    ):
        with pytest.raises(InvalidQuery):
            AuditQuery(**bad)


def fake_chain(n: int, topic: str = "t", partition: int = 0) -> list[ChainRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        record = {
            "verdict": {
                "event_id": f"e{seq}",
                "tenant_id": "a",
                "decision": "allow",
                "decided_at": "2026-11-29T02:00:00Z",
            }
        }
        rh = record_hash(record)
        row_hash = link_hash(prev, rh, seq, topic, partition)
        fields = RecordFields(event_id=f"e{seq}", tenant_id="a", decided_at=T0, decision="allow")
        rows.append(ChainRow(seq, seq, rh, prev, row_hash, record, None, False, fields))
        prev = row_hash
    return rows


def test_check_chain_walks_a_good_chain_and_on_past_each_break() -> None:
    rows = fake_chain(6)
    head = ChainHead("t", 0, 6, rows[-1].row_hash)
    assert check_chain("t", 0, rows, [("anchor", head)]).problem is None
    assert check_chain("t", 0, rows[:4], [("anchor", head)]).problem.kind == "truncated"  # type: ignore[union-attr]
    broken = rows[:1] + rows[2:3] + rows[4:]  # seq 2 and seq 4 deleted
    result = check_chain("t", 0, broken)
    assert [(p.kind, p.seq) for p in result.problems] == [("gap", 3), ("gap", 5)]
    assert result.rows_checked == 4 and result.last_seq == 6 and result.unlisted == 0
    other = check_chain("t", 1, rows)  # rows moved to another partition break their own hashes
    assert other.problem is not None and other.problem.kind == "row_hash"
    assert len(other.problems) == 6
    rewritten = ChainHead("t", 0, 3, "0" * 64)
    stale = check_chain("t", 0, rows, [("head", rewritten)]).problem
    assert stale is not None and (stale.kind, stale.seq) == ("head_mismatch", 3)


def test_check_chain_lists_the_first_problems_of_a_chain_and_counts_the_rest() -> None:
    from moderator.audit.integrity.verify import MAX_LISTED

    moved = check_chain("t", 1, fake_chain(MAX_LISTED + 5))  # every row's hash is another's
    assert len(moved.problems) == MAX_LISTED and moved.unlisted == 5
