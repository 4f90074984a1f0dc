"""`verify` against tampering done directly in SQL, on SQLite and PostgreSQL, with and without
an exported anchor; anchors exported to a file and to S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, func, select, update

from audit_support import BACKENDS, BASE_TIME, TOPIC, incoming, make_record, opened
from moderator.audit.chain.canonical import canonical_json, link_hash
from moderator.audit.db.retention import redact_expired
from moderator.audit.db.store import AuditStore
from moderator.audit.db.tables import anchors, audit_records, chain_heads, policy_versions
from moderator.audit.integrity.anchors import (
    FileAnchorSink,
    MemoryAnchorSink,
    S3AnchorSink,
    export_anchor,
    latest_anchor,
    make_anchor,
)
from moderator.audit.integrity.verify import EXIT_INTACT, EXIT_TAMPERED, VerifyReport, verify
from moderator.audit.models import Anchor
from moderator.dev.stack import EmbeddedStack
from tests.audit_tamper import fake_redaction, recompute_chain

R = audit_records.c
ROWS = 10


@pytest.fixture(params=BACKENDS)
def db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[AuditStore, Engine, Anchor]]:
    """Two partitions of ROWS rows each, and an anchor taken after them."""
    with opened(str(request.param), tmp_path) as (store, raw):
        store.insert(incoming([make_record(i) for i in range(ROWS)], 0))
        store.insert(incoming([make_record(100 + i, tenant="news") for i in range(ROWS)], 1))
        assert verify(store, None).ok
        yield store, raw, make_anchor(store)


def where(seq: int, partition: int = 0) -> Any:
    return (R.topic == TOPIC) & (R.partition == partition) & (R.seq == seq)


def row(conn: Connection, seq: int, partition: int = 0) -> Any:
    return conn.execute(select(audit_records).where(where(seq, partition))).one()


def only_problem(report: VerifyReport) -> Any:
    assert not report.ok and report.exit_code == EXIT_TAMPERED
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def edit_record(conn: Connection, seq: int, change: Any) -> None:
    stored = json.loads(row(conn, seq).record)
    change(stored)
    conn.execute(
        update(audit_records).where(where(seq)).values(record=canonical_json(stored).decode())
    )


def set_decision(record: dict[str, Any]) -> None:
    record["verdict"]["decision"] = "block"


def test_an_intact_store_verifies(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, _, anchor = db
    report = verify(store, anchor)
    assert report.ok and report.exit_code == EXIT_INTACT
    assert (report.rows_checked, report.chains) == (2 * ROWS, 2)
    store.insert(incoming([make_record(50)], 0, 50))  # growth after the anchor is fine
    assert verify(store, anchor).ok


def test_an_edited_record_names_its_row(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        edit_record(conn, 4, set_decision)
        conn.execute(update(audit_records).where(where(4)).values(decision="block"))
        target = row(conn, 4)
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.partition, problem.seq) == ("edited", 0, 4)
    assert (problem.row_id, problem.event_id) == (target.id, target.event_id)
    assert "ev-00003" in str(problem) and "seq 4" in str(problem)


def test_an_edited_column_is_caught_too(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, _ = db
    with raw.begin() as conn:
        conn.execute(update(audit_records).where(where(6, 1)).values(decision="block"))
    problem = only_problem(verify(store, None))
    assert (problem.kind, problem.partition, problem.seq) == ("edited", 1, 6)
    assert "column decision" in problem.detail


def test_a_deleted_row_leaves_a_gap(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, _ = db
    with raw.begin() as conn:
        conn.execute(delete(audit_records).where(where(5)))
    problem = only_problem(verify(store, None))
    assert (problem.kind, problem.seq) == ("gap", 6)
    assert "expected seq 5" in problem.detail


def test_swapped_rows_are_reported(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, _ = db
    with raw.begin() as conn:
        conn.execute(update(audit_records).where(where(3)).values(seq=-1))
        conn.execute(update(audit_records).where(where(4)).values(seq=3))
        conn.execute(update(audit_records).where(where(-1)).values(seq=4))
    problems = verify(store, None).problems
    assert [(p.kind, p.seq) for p in problems] == [("reordered", 3), ("reordered", 4), ("link", 5)]
    assert "written as seq 4" in problems[0].detail and "written as seq 3" in problems[1].detail


def test_a_truncated_tail_is_caught_by_the_anchor(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        conn.execute(delete(audit_records).where(R.partition == 0, R.seq > 8))
    problem = only_problem(verify(store, None))  # the recorded head still says 10
    assert (problem.kind, problem.seq) == ("truncated", 9)
    with raw.begin() as conn:  # a careful attacker moves the head back too
        last = row(conn, 8)
        conn.execute(
            update(chain_heads)
            .where(chain_heads.c.partition == 0)
            .values(seq=8, row_hash=last.row_hash)
        )
    assert verify(store, None).ok  # undetectable from inside the database...
    problem = only_problem(verify(store, anchor))  # ...but not against the anchor
    assert (problem.kind, problem.partition, problem.seq) == ("truncated", 0, 9)
    assert "anchor is at seq 10" in problem.detail


def test_a_deleted_partition_is_caught_by_the_anchor(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        conn.execute(delete(audit_records).where(R.partition == 1))
        conn.execute(delete(chain_heads).where(chain_heads.c.partition == 1))
    assert verify(store, None).ok
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.partition) == ("truncated", 1)


def test_a_recomputed_chain_is_caught_only_by_the_anchor(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        edit_record(conn, 2, set_decision)
        conn.execute(update(audit_records).where(where(2)).values(decision="block"))
    recompute_chain(raw, store, TOPIC, 0)
    assert verify(store, None).ok  # consistent from the inside
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.partition, problem.seq) == ("anchor_mismatch", 0, ROWS)


def test_an_edited_policy_version_is_caught(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, _ = db
    with raw.begin() as conn:
        key, doc = conn.execute(
            select(policy_versions.c.policy_hash, policy_versions.c.document).limit(1)
        ).one()
        conn.execute(
            update(policy_versions)
            .where(policy_versions.c.policy_hash == key)
            .values(document=doc.replace("block", "allow"))
        )
    report = verify(store, None)
    kinds = [p.kind for p in report.problems]
    assert kinds[0] == "policy_version" and set(kinds[1:]) == {"edited"}
    edited = [p for p in report.problems if p.kind == "edited"]
    assert all("policy_versions document" in p.detail for p in edited)  # every row that uses it
    with raw.connect() as conn:
        users = conn.execute(
            select(func.count()).select_from(audit_records).where(R.policy_hash == key)
        ).scalar_one()
    assert len(edited) == users > 1


# What retention keeps on a redacted row is bound into row_hash by columns_hash: forging any of
# it on a row made to look redacted (record NULL, redacted_at set) breaks that row.
FORGERIES: dict[str, Any] = {
    "decision": "block",
    "tenant_id": "news",
    "event_id": "ev-99999",
    "decided_at": BASE_TIME + timedelta(days=30),
    "score": 0.99,
    "category_code": "O4",
    "policy_hash": "f" * 64,
}


@pytest.mark.parametrize("column", list(FORGERIES))
def test_a_fake_redaction_cannot_hide_an_edited_column(
    db: tuple[AuditStore, Engine, Anchor], column: str
) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        fake_redaction(conn, "ev-00003", **{column: FORGERIES[column]})
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.partition, problem.seq) == ("edited", 0, 4)
    assert "columns_hash" in problem.detail


def test_a_redacted_row_keeps_nothing_redaction_clears(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    store, raw, anchor = db
    redact_expired(store, {"default": 0}, BASE_TIME + timedelta(days=1))
    assert verify(store, anchor).ok
    with raw.begin() as conn:
        conn.execute(update(audit_records).where(where(2)).values(object_key="kids/u/other.jpg"))
        conn.execute(update(audit_records).where(where(3, 1)).values(record='{"verdict": {}}'))
    report = verify(store, anchor)
    assert sorted((p.partition, p.seq, p.kind) for p in report.problems) == [
        (0, 2, "edited"),
        (1, 3, "edited"),
    ]
    assert "column object_key still holds a value" in str(report.problems[0])
    assert "the record is still there" in str(report.problems[1])


def test_redacted_at_on_a_row_that_keeps_its_record_is_caught(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        conn.execute(
            update(audit_records).where(where(5)).values(redacted_at=BASE_TIME + timedelta(days=9))
        )
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.seq) == ("edited", 5)


def test_an_edited_offset_is_caught(db: tuple[AuditStore, Engine, Anchor]) -> None:
    store, raw, anchor = db
    with raw.begin() as conn:
        conn.execute(update(audit_records).where(where(6)).values(offset=600))
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.seq) == ("edited", 6)


def test_a_row_turned_back_into_format_v1_is_caught(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    """Without columns_hash a redacted row's columns would go unchecked: dropping it from a row
    (and even giving the row a consistent format v1 hash) is tampering."""
    store, raw, anchor = db
    with raw.begin() as conn:
        fake_redaction(conn, "ev-00009", decision="block")
        conn.execute(update(audit_records).where(where(10)).values(columns_hash=None))
    problem = only_problem(verify(store, anchor))
    assert (problem.kind, problem.seq) == ("downgraded", 10)
    with raw.begin() as conn:  # a v1 hash that covers the row's seq, prev_hash and record_hash
        last = row(conn, 10)
        v1 = link_hash(last.prev_hash, last.record_hash, 10, TOPIC, 0)
        conn.execute(update(audit_records).where(where(10)).values(row_hash=v1))
        conn.execute(update(chain_heads).where(chain_heads.c.partition == 0).values(row_hash=v1))
    assert only_problem(verify(store, None)).kind == "downgraded"


def test_a_record_removed_without_redaction_is_caught(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    store, raw, _ = db
    with raw.begin() as conn:
        conn.execute(update(audit_records).where(where(7)).values(record=None))
    assert only_problem(verify(store, None)).kind == "unredacted_null"


def test_redaction_keeps_verify_passing_against_the_anchor(
    db: tuple[AuditStore, Engine, Anchor],
) -> None:
    store, _, anchor = db
    now = make_record(0)["verdict"]["decided_at"]
    from moderator.audit.fields import parse_time

    counts = redact_expired(store, {"kids": 0, "default": None}, parse_time(now).replace(year=2027))
    assert counts == {"kids": ROWS}
    report = verify(store, anchor)
    assert report.ok and report.rows_redacted == ROWS


def test_anchor_exports_are_recorded(db: tuple[AuditStore, Engine, Anchor], tmp_path: Path) -> None:
    store, raw, _ = db
    sink = FileAnchorSink(tmp_path / "anchors" / "audit.jsonl")
    memory = MemoryAnchorSink()
    first = export_anchor(store, [sink, memory])
    store.insert(incoming([make_record(60)], 0, 60))
    second = export_anchor(store, [sink])
    assert latest_anchor(sink.path) == second != first
    assert memory.latest() == first
    assert {(h.partition, h.seq) for h in second.heads} == {(0, ROWS + 1), (1, ROWS)}
    with raw.connect() as conn:
        recorded = conn.execute(
            select(anchors.c.destination, anchors.c.heads).order_by(anchors.c.id)
        ).all()
    assert [d for d, _ in recorded] == [sink.destination, "memory", sink.destination]
    assert json.loads(recorded[-1][1]) == [h.to_json() for h in second.heads]
    assert verify(store, latest_anchor(sink.path)).ok


def test_s3_anchor_sink_round_trip(
    db: tuple[AuditStore, Engine, Anchor], stack: EmbeddedStack, unique: str
) -> None:
    # The session's S3 server, not moto.mock_aws(): leaving mock_aws resets moto's shared
    # in-process state, which would empty the embedded stack's buckets for later tests.
    store, _, anchor = db
    client = stack.s3_client()
    bucket = f"audit-anchors-{unique}"
    client.create_bucket(Bucket=bucket)
    sink = S3AnchorSink(client, bucket, "prod/anchors")
    assert sink.latest() is None
    export_anchor(store, [sink], now=anchor.created_at.replace(year=2025))
    newest = export_anchor(store, [sink], now=anchor.created_at.replace(year=2027))
    export_anchor(store, [sink], now=anchor.created_at.replace(year=2026))
    assert sink.latest() == newest
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 3 and all(k.startswith("prod/anchors/20") for k in keys)


@pytest.mark.postgres
def test_sqlite_and_postgres_hash_the_same_bytes(tmp_path: Path) -> None:
    records = [make_record(i, tenant=("kids", "news")[i % 2]) for i in range(12)]
    records[3]["verdict"]["object"]["key"] = "kids/ünïcødé/😀/\u2028.jpg"
    records[5]["verdict"]["assessment"]["score"] = 1e-7
    records[6]["verdict"]["model"]["name"] = "modèle/😀\u2028"  # a kept column: columns_hash
    hashes = []
    for backend in ("sqlite", "postgres"):
        with opened(backend, tmp_path / backend) as (store, _):
            store.insert(incoming(records[:7]))
            store.insert(incoming(records[7:], first_offset=7))
            hashes.append(
                [
                    (r.seq, r.record_hash, r.columns_hash, r.row_hash)
                    for r in store.iter_chain(TOPIC, 0)
                ]
            )
    assert len(hashes[0]) == 12 and hashes[0] == hashes[1]
    assert all(columns is not None for _, _, columns, _ in hashes[0])
