"""The audit store on SQLite and PostgreSQL: migrations, idempotent chained inserts, policy
versions, queries with cursor pagination, redaction."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from audit_support import BACKENDS, BASE_TIME, TOPIC, incoming, make_record, opened, policy
from moderator.audit.chain.canonical import GENESIS_HASH, columns_hash, link_hash, record_hash
from moderator.audit.db import migrations
from moderator.audit.db.migrations import LATEST, schema_differences
from moderator.audit.db.retention import redact_expired
from moderator.audit.db.store import AuditStore
from moderator.audit.db.tables import audit_records, policy_versions, schema_migrations
from moderator.audit.errors import AuditUnavailable, InvalidQuery, SchemaVersionError
from moderator.audit.integrity.anchors import make_anchor
from moderator.audit.integrity.verify import verify
from moderator.audit.models import AuditQuery, AuditRow, IncomingRecord
from moderator.errors import ConfigError
from tests.audit_tamper import revert_to_version_2, write_as_format_v1


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[tuple[AuditStore, Engine]]:
    with opened(backend, tmp_path) as pair:
        yield pair


@pytest.fixture
def store(db: tuple[AuditStore, Engine]) -> AuditStore:
    return db[0]


def reopen(raw: Engine) -> AuditStore:
    """Another store on the same database (`AuditStore.url` hides the password)."""
    return AuditStore.open(raw.url.render_as_string(hide_password=False))


def chain(store: AuditStore, partition: int = 0) -> list[Any]:
    return list(store.iter_chain(TOPIC, partition))


def test_open_migrates_once_and_matches_the_schema(db: tuple[AuditStore, Engine]) -> None:
    _, raw = db
    with raw.connect() as conn:
        versions = conn.execute(select(schema_migrations.c.version)).scalars().all()
        assert versions == list(range(1, LATEST + 1))
        assert schema_differences(conn) == []
    reopen(raw).close()  # reopening applies nothing
    with raw.connect() as conn:
        assert conn.execute(select(schema_migrations.c.version)).scalars().all() == versions


def test_a_new_step_upgrades_an_old_database_and_a_newer_one_is_refused(
    db: tuple[AuditStore, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, raw = db
    store.insert(incoming([make_record(1)]))

    def add_index(conn: Connection) -> None:
        conn.execute(text("CREATE INDEX ix_test_source ON audit_records (source)"))

    step = migrations.Migration(LATEST + 1, "index on source (test)", add_index)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    monkeypatch.setattr(migrations, "LATEST", LATEST + 1)
    reopen(raw).close()
    with raw.connect() as conn:
        assert conn.execute(select(schema_migrations.c.version)).scalars().all() == list(
            range(1, LATEST + 2)
        )
        assert "ix_test_source" in {ix["name"] for ix in inspect(conn).get_indexes("audit_records")}
    assert store.count() == 1  # data untouched
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
    monkeypatch.setattr(migrations, "LATEST", LATEST)
    with pytest.raises(SchemaVersionError, match="newer"):
        reopen(raw)


def test_a_version_1_database_is_upgraded_to_the_current_schema(
    db: tuple[AuditStore, Engine],
) -> None:
    """Migrations 2 (object key and sha256 indexes with time order) and 3 (columns_hash, keyset
    indexes) on a version-1 database whose rows are in chain format v1."""
    store, raw = db
    store.insert(incoming([make_record(1), make_record(2)]))
    with raw.begin() as conn:
        write_as_format_v1(conn, TOPIC, 0)
    revert_to_version_2(raw)
    with raw.begin() as conn:  # and back into its version-1 shape
        for new, old, column in (
            ("ix_audit_records_object_key_time", "ix_audit_records_object_key", "object_key"),
            ("ix_audit_records_sha256_time", "ix_audit_records_sha256", "sha256"),
        ):
            conn.execute(text(f"DROP INDEX {new}"))
            conn.execute(text(f"CREATE INDEX {old} ON audit_records ({column})"))
        conn.execute(schema_migrations.delete())
        conn.execute(
            schema_migrations.insert().values(
                version=1, description="baseline", applied_at=datetime.now(UTC)
            )
        )
        assert schema_differences(conn) != []
    reopen(raw).close()
    with raw.connect() as conn:
        assert conn.execute(select(schema_migrations.c.version)).scalars().all() == [1, 2, 3, 4]
        assert schema_differences(conn) == []
    assert store.count() == 2
    report = verify(store, None)
    assert report.ok and (report.rows_legacy, report.rows_uncovered) == (2, 0)


def test_a_version_2_database_gets_columns_hashes_for_new_rows_only(
    db: tuple[AuditStore, Engine],
) -> None:
    """Migration 3 on a version-2 database: the old rows keep their format v1 hashes (their
    chain still verifies, anchors taken before stay valid), rows stored after it extend the
    same chains in format v2, and retention works on both."""
    store, raw = db
    store.insert(incoming([make_record(i) for i in range(3)]))
    with raw.begin() as conn:
        write_as_format_v1(conn, TOPIC, 0)
    revert_to_version_2(raw)
    with raw.connect() as conn:
        assert "audit_records: missing column columns_hash" in schema_differences(conn)
    old_anchor = make_anchor(store)
    with reopen(raw) as upgraded:
        with raw.connect() as conn:
            assert schema_differences(conn) == []
            indexes = {
                ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("audit_records")
            }
        assert indexes["ix_audit_records_tenant_time_event"] == [
            "tenant_id",
            "decided_at",
            "event_id",
        ]
        assert indexes["ix_audit_records_time_event"] == ["decided_at", "event_id"]
        upgraded.insert(incoming([make_record(i) for i in range(3, 5)], first_offset=3))
        rows = chain(upgraded)
        assert [r.columns_hash is None for r in rows] == [True, True, True, False, False]
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5] and rows[3].prev_hash == rows[2].row_hash
        report = verify(upgraded, old_anchor)
        assert report.ok, report.problems
        assert (report.rows_legacy, report.rows_uncovered) == (3, 0)
        redact_expired(upgraded, {"default": 0}, BASE_TIME + timedelta(days=1))
        report = verify(upgraded, make_anchor(upgraded))
        assert report.ok, report.problems
        assert (report.rows_redacted, report.rows_legacy, report.rows_uncovered) == (5, 3, 3)


def _insert_as_format_v1(raw: Engine, n: int) -> None:
    """What a sink older than schema version 3 writes: a row without columns_hash."""
    known = [c for c in audit_records.c if c.name not in ("id", "columns_hash")]  # version 2's
    with raw.begin() as conn:
        row = dict(conn.execute(select(*known).limit(1)).mappings().one())
        row.update(event_id=f"v1-writer-{n}", seq=row["seq"] + 1000 + n)
        conn.execute(audit_records.insert().values(**row))


@pytest.mark.parametrize("migrated", [False, True], ids=["created", "migrated"])
def test_a_row_without_columns_hash_is_refused(
    db: tuple[AuditStore, Engine], migrated: bool
) -> None:
    """A sink that opened the store before migration 3 would go on writing chain format v1
    rows, which verify reports as a downgrade: the database refuses them, created at the
    current version or migrated to it; retention still updates rows stored in format v1."""
    store, raw = db
    store.insert(incoming([make_record(i) for i in range(2)]))
    if migrated:
        with raw.begin() as conn:
            write_as_format_v1(conn, TOPIC, 0)
        revert_to_version_2(raw)
        _insert_as_format_v1(raw, 1)  # accepted at version 2, as it was
        reopen(raw).close()
    with pytest.raises(IntegrityError, match="its writer predates schema version 3"):
        _insert_as_format_v1(raw, 2)
    redact_expired(store, {"default": 0}, BASE_TIME + timedelta(days=1))
    assert store.count() == (3 if migrated else 2)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE audit_records (x INTEGER)")
    with pytest.raises(SchemaVersionError, match="not a moderator audit database"):
        AuditStore.open(f"sqlite:///{path}")


def test_a_sqlite_file_is_created_in_an_existing_folder_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditStore.open(f"sqlite:///{path}") as store:
        assert store.count() == 0
    assert path.is_file()
    missing = tmp_path / "deep" / "er" / "audit.db"
    with pytest.raises(ConfigError, match="does not exist"):
        AuditStore.open(f"sqlite:///{missing}")
    assert not (tmp_path / "deep").exists()


def test_unreachable_postgres_is_unavailable() -> None:
    with pytest.raises(AuditUnavailable, match="audit store"):
        AuditStore.open("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")


def test_insert_is_idempotent(store: AuditStore) -> None:
    records = [make_record(i) for i in range(6)]
    first = store.insert(incoming([*records[:4], records[0]]))  # a repeat within the batch
    assert (first.inserted, first.duplicates, first.conflicts) == (4, 1, 0)
    again = store.insert(incoming(records[2:], first_offset=2))  # redelivery across batches
    assert (again.inserted, again.duplicates) == (2, 2)
    changed = make_record(1, decision="block")  # same event, different content: first wins
    third = store.insert(incoming([changed], first_offset=9))
    assert (third.inserted, third.duplicates, third.conflicts) == (0, 1, 1)
    assert store.count() == 6
    got = store.get("ev-00001")
    assert got is not None and got.decision == "allow"


def test_chains_continue_across_batches_per_partition(store: AuditStore) -> None:
    for start in range(0, 9, 3):
        batch = [make_record(i) for i in range(start, start + 3)]
        other = [make_record(100 + i) for i in range(start, start + 3)]
        store.insert(incoming(batch, 0, start) + incoming(other, 1, start))
    for partition in (0, 1):
        rows = chain(store, partition)
        assert [r.seq for r in rows] == list(range(1, 10))
        prev = GENESIS_HASH
        for row in rows:
            assert row.prev_hash == prev
            assert row.record_hash == record_hash(row.record)
            assert row.columns_hash == columns_hash({**row.fields.columns(), "offset": row.offset})
            assert row.row_hash == link_hash(
                prev, row.record_hash, row.seq, TOPIC, partition, row.columns_hash
            )
            prev = row.row_hash
    heads = store.chain_heads()
    assert [(h.partition, h.seq) for h in heads] == [(0, 9), (1, 9)]
    assert heads[0].row_hash == chain(store, 0)[-1].row_hash


def test_seq_follows_offsets_within_a_batch(store: AuditStore) -> None:
    records = [make_record(i) for i in range(4)]
    items = [IncomingRecord(TOPIC, 0, 10 - n, r) for n, r in enumerate(records)]
    store.insert(items)
    assert [r.fields.event_id for r in chain(store)] == [
        "ev-00003",
        "ev-00002",
        "ev-00001",
        "ev-00000",
    ]


def test_malformed_records_are_rejected_not_raised(store: AuditStore) -> None:
    bad = {"verdict": {"event_id": "x"}}
    nan = make_record(2)
    nan["verdict"]["assessment"]["score"] = float("nan")
    huge = make_record(3)  # JSON allows any integer; a float holds none this large
    huge["verdict"]["assessment"]["score"] = 10**400
    result = store.insert(incoming([make_record(1), bad, nan, huge]))
    assert result.inserted == 1
    assert [r.offset for r in result.rejected] == [1, 2, 3]
    assert "tenant_id" in result.rejected[0].reason


def test_each_policy_version_is_kept_once(db: tuple[AuditStore, Engine]) -> None:
    store, raw = db
    records = [make_record(i) for i in range(5)] + [make_record(5, tenant="news")]
    result = store.insert(incoming(records))
    assert result.policy_versions_added == 2 and result.policy_hash_mismatches == 0
    assert store.insert(incoming([make_record(6)], first_offset=6)).policy_versions_added == 0
    with raw.connect() as conn:
        assert conn.execute(select(policy_versions.c.policy_hash)).scalars().all().__len__() == 2
        stored = conn.execute(select(audit_records.c.record).limit(1)).scalar_one()
    assert "policy_document" not in json.loads(stored)  # kept once, in policy_versions
    kids = policy("kids")
    assert store.policy_version(kids.full_hash) == kids.document()
    got = store.get("ev-00000")
    assert got is not None and got.record == records[0]  # the record exactly as received
    assert store.policy_version("f" * 64) is None


def test_a_policy_document_that_does_not_match_its_hash_is_not_kept(store: AuditStore) -> None:
    record = make_record(1)
    record["policy_document"]["prompt"] += " (edited)"
    result = store.insert(incoming([record]))
    assert (result.inserted, result.policy_hash_mismatches, result.policy_versions_added) == (
        1,
        1,
        0,
    )
    got = store.get("ev-00001")
    assert got is not None and got.record == record  # kept whole in the row instead
    assert verify(store, None).ok


def dataset() -> list[dict[str, Any]]:
    out = []
    for i in range(40):
        out.append(
            make_record(
                i,
                tenant=("kids", "news", "museum")[i % 3],
                decided_at=BASE_TIME + timedelta(seconds=i // 4),  # ties: four rows per second
                decision=("allow", "review", "block")[i % 3],
                category=(
                    "NA: None applying",
                    "O4: Nudity Content",
                    "O2: Violence, Harm, or Cruelty",
                    None,
                )[i % 4],
                engine=("fake", "openai")[i % 2],
                model_name=("m-a", "m-b", "m-c")[i % 3],
                error="engine_timeout" if i % 4 == 3 else None,
            )
        )
    return out


def collect(store: AuditStore, **filters: Any) -> list[AuditRow]:
    rows: list[AuditRow] = []
    cursor = None
    while True:
        page = store.query(AuditQuery(**filters, cursor=cursor))
        rows += page.rows
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def test_query_filters_sort_and_pagination(store: AuditStore) -> None:
    records = dataset()
    store.insert(incoming(records[:20]))
    store.insert(incoming(records[20:], partition=1))
    verdicts = [r["verdict"] for r in records]
    kids = policy("kids")

    def ids(rows: list[AuditRow]) -> set[str]:
        return {r.event_id for r in rows}

    def expect(pred: Any) -> set[str]:
        return {v["event_id"] for v in verdicts if pred(v)}

    cases: list[tuple[dict[str, Any], Any]] = [
        ({"tenant": "news"}, lambda v: v["tenant_id"] == "news"),
        ({"event_id": "ev-00007"}, lambda v: v["event_id"] == "ev-00007"),
        ({"bucket": "uploads"}, lambda v: v["object"]["bucket"] == "uploads"),
        ({"object_key": "kids/u/3.jpg"}, lambda v: v["object"]["key"] == "kids/u/3.jpg"),
        ({"sha256": f"{5:064x}"}, lambda v: v["event_id"] == "ev-00005"),
        ({"decision": "block"}, lambda v: v["decision"] == "block"),
        (
            {"category": "O4"},
            lambda v: (v["assessment"] or {}).get("category", "").startswith("O4"),
        ),
        (
            {"category": "O2: Violence, Harm, or Cruelty"},
            lambda v: (v["assessment"] or {}).get("category") == "O2: Violence, Harm, or Cruelty",
        ),
        ({"policy_version": kids.version}, lambda v: v["tenant_id"] == "kids"),
        ({"policy_version": kids.full_hash}, lambda v: v["tenant_id"] == "kids"),
        ({"model": "openai"}, lambda v: v["model"]["engine"] == "openai"),
        (
            {"model": "openai:m-b"},
            lambda v: v["model"]["engine"] == "openai" and v["model"]["name"] == "m-b",
        ),
        (
            {"since": BASE_TIME + timedelta(seconds=3), "until": BASE_TIME + timedelta(seconds=5)},
            lambda v: 12 <= int(v["event_id"][3:]) < 20,
        ),
        (
            {"tenant": "kids", "decision": "allow", "model": "fake"},
            lambda v: (
                v["tenant_id"] == "kids"
                and v["decision"] == "allow"
                and v["model"]["engine"] == "fake"
            ),
        ),
    ]
    for filters, pred in cases:
        want = expect(pred)
        assert want, filters
        assert ids(collect(store, **filters, limit=3)) == want, filters

    for sort in ("decided_at", "-decided_at"):
        full = store.query(AuditQuery(sort=sort, limit=1000)).rows
        keys = [(r.decided_at, r.id) for r in full]
        assert keys == sorted(keys, reverse=sort == "-decided_at")
        for limit in (1, 7, 40):
            paged = collect(store, sort=sort, limit=limit)
            assert [r.id for r in paged] == [r.id for r in full]  # no duplicates, no gaps
    last = store.query(AuditQuery(limit=40))
    assert last.next_cursor is None and len(last.rows) == 40


def test_cursor_is_stable_while_rows_are_added(store: AuditStore) -> None:
    records = dataset()
    store.insert(incoming(records[:20]))
    before = collect(store, sort="decided_at", limit=10)
    page = store.query(AuditQuery(sort="decided_at", limit=10))
    # rows that sort before the cursor, and after it, arrive between the two pages
    early = [make_record(100 + i, decided_at=BASE_TIME - timedelta(hours=1)) for i in range(5)]
    store.insert(incoming(early + records[20:], first_offset=20))
    second = store.query(AuditQuery(sort="decided_at", limit=10, cursor=page.next_cursor))
    assert [r.id for r in second.rows] == [r.id for r in before[10:20]]


def test_bad_queries_are_usage_errors(store: AuditStore) -> None:
    with pytest.raises(InvalidQuery):
        AuditQuery(limit=0)
    with pytest.raises(InvalidQuery):
        AuditQuery(limit=1001)
    store.insert(incoming([make_record(i) for i in range(3)]))
    cursor = store.query(AuditQuery(limit=1, sort="decided_at")).next_cursor
    with pytest.raises(InvalidQuery, match="sort"):
        store.query(AuditQuery(limit=1, sort="-decided_at", cursor=cursor))
    with pytest.raises(InvalidQuery, match="cursor"):
        store.query(AuditQuery(cursor="not-a-cursor"))


def test_iter_chain_streams_in_chunks(store: AuditStore) -> None:
    store.insert(incoming([make_record(i) for i in range(25)]))
    rows = list(store.iter_chain(TOPIC, 0, chunk=4))
    assert [r.seq for r in rows] == list(range(1, 26))


def test_redaction_by_tenant_retention_keeps_the_chain(db: tuple[AuditStore, Engine]) -> None:
    store, raw = db
    records = [
        make_record(
            i, tenant=("kids", "news", "museum")[i % 3], decided_at=BASE_TIME + timedelta(days=i)
        )
        for i in range(12)
    ]
    store.insert(incoming(records))
    now = BASE_TIME + timedelta(days=12)
    # kids: 5 days; news: kept forever; everyone else (museum): 8 days
    counts = redact_expired(store, {"kids": 5, "news": None, "default": 8}, now)
    kids_old = [i for i in range(12) if i % 3 == 0 and i < 7]
    museum_old = [i for i in range(12) if i % 3 == 2 and i < 4]
    assert counts == {"kids": len(kids_old), "museum": len(museum_old)}
    redacted = store.get(f"ev-{kids_old[0]:05d}")
    assert redacted is not None
    assert redacted.record is None and redacted.object_key is None and redacted.redacted_at == now
    assert redacted.decision == records[kids_old[0]]["verdict"]["decision"]  # decision columns stay
    kept = store.get("ev-00001")  # news
    assert kept is not None and kept.record == records[1]
    assert redact_expired(store, {"kids": 5, "news": None, "default": 8}, now) == {}  # idempotent
    report = verify(store, None)
    assert report.ok, report.problems
    assert report.rows_redacted == len(kids_old) + len(museum_old)
    with raw.connect() as conn:
        assert (
            conn.execute(
                select(audit_records.c.record).where(audit_records.c.redacted_at.is_not(None))
            )
            .scalars()
            .all()
            == [None] * report.rows_redacted
        )


def test_concurrent_writers_never_fork_a_chain(db: tuple[AuditStore, Engine]) -> None:
    store, raw = db
    other = reopen(raw)  # a second sink: its own engine and connections
    errors: list[BaseException] = []

    def write(target: AuditStore, base: int) -> None:
        try:
            for n in range(10):
                batch = [make_record(base + n * 5 + k) for k in range(5)]
                # every writer also redelivers the other's first record: skipped, never doubled
                batch.append(make_record((1000 if base == 0 else 0) + 0))
                target.insert(incoming(batch, 0, base + n * 5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, b)) for s, b in ((store, 0), (other, 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    other.close()
    assert [r.seq for r in chain(store)] == list(range(1, 101))
    assert verify(store, None).ok
