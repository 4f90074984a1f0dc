"""Schema migrations: an ordered list of steps in code, applied in order at open.

`schema.py` always describes the current schema. `MIGRATIONS[n - 1]` is the step that takes a
database from version n - 1 to version n; `schema_migrations` records each applied version with
its time. When a writer opens the store (`migrate`; a reader only checks the version,
`check_current`):

- a fresh database (no `schema_migrations` table) gets the current schema in one transaction
  (`metadata.create_all`) and every version recorded as applied: the steps' effects are already
  in `schema.py`, so they never run on it;
- an older database gets each missing step in order, one transaction per step (DDL is
  transactional on both PostgreSQL and SQLite), the version recorded in the same transaction;
- a database with a version newer than this code is refused (`SchemaVersionError`).

Concurrent openers are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite:
BEGIN IMMEDIATE), and each step re-reads the version under that lock.

How to add a migration:
1. Change the tables in `schema.py` to the new shape.
2. Append `Migration(N, "what changes", _vN)` where `_vN(conn)` turns a version N-1 database
   into exactly that shape, with SQLAlchemy Core or DDL both dialects accept (`ALTER TABLE ...
   ADD COLUMN`, `CREATE INDEX`; SQLite cannot alter or drop constraints: rebuild the table with
   `CREATE TABLE new ...; INSERT INTO new SELECT ...; DROP; ALTER TABLE new RENAME`). Backfill
   data in the same step. Never edit a released step.
3. Add a test that builds a version N-1 database (its DDL, or an older copy of `schema.py`),
   opens it, and asserts `schema_differences(conn) == []` on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, UniqueConstraint, func, insert, inspect, select, text

from moderator.audit.db.connect import WRITE
from moderator.audit.db.tables import FORMAT_V2_DDL, audit_records, metadata, schema_migrations
from moderator.audit.errors import SchemaVersionError

# Arbitrary constant naming the migration lock among PostgreSQL advisory locks.
_PG_LOCK_KEY = 0x6D6F645F61756474


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Connection], None]


def _v1_baseline(conn: Connection) -> None:
    # Version 1 is the first schema: only ever applied to a fresh database (see `migrate`).
    metadata.create_all(conn)


def _v2_lookup_indexes(conn: Connection) -> None:
    # Measured at 1M rows on PostgreSQL before ANALYZE: an object-key lookup ordered by time
    # scanned the time index backwards (~1 s); with (key, time) it is one index range.
    for old, new, column in (
        ("ix_audit_records_object_key", "ix_audit_records_object_key_time", "object_key"),
        ("ix_audit_records_sha256", "ix_audit_records_sha256_time", "sha256"),
    ):
        conn.execute(text(f"DROP INDEX IF EXISTS {old}"))
        conn.execute(text(f"CREATE INDEX {new} ON audit_records ({column}, decided_at, id)"))


def _v3_columns_hash(conn: Connection) -> None:
    # Rows already stored keep a NULL columns_hash: their row_hash (format v1) cannot cover one
    # without rewriting every later link, which anchors exported before would then contradict.
    conn.execute(text("ALTER TABLE audit_records ADD COLUMN columns_hash VARCHAR(64)"))
    for name, columns in (
        ("ix_audit_records_tenant_time_event", "tenant_id, decided_at, event_id"),
        ("ix_audit_records_time_event", "decided_at, event_id"),
    ):
        conn.execute(text(f"CREATE INDEX {name} ON audit_records ({columns})"))


def _v4_format_v2_only(conn: Connection) -> None:
    for statement in FORMAT_V2_DDL.get(conn.dialect.name, ()):
        conn.exec_driver_sql(statement)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "audit_records, chain_heads, policy_versions, anchors, schema_migrations", _v1_baseline
    ),
    Migration(2, "object key and sha256 lookups indexed with time order", _v2_lookup_indexes),
    Migration(
        3,
        "columns_hash (chain format v2); (tenant, time, event id) and (time, event id) indexes",
        _v3_columns_hash,
    ),
    Migration(4, "rows inserted without columns_hash are refused", _v4_format_v2_only),
)
LATEST = MIGRATIONS[-1].version


def migrate(engine: Engine) -> int:
    """Bring the database to `LATEST`; return the version it was at before (0 = fresh)."""
    start: int | None = None
    while True:
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            _lock(conn)
            current = current_version(conn)
            if start is None:
                start = current
            if current == LATEST:
                return start
            if current > LATEST:
                raise _newer(current)
            now = datetime.now(UTC)
            if current == 0:
                metadata.create_all(conn)
                steps = MIGRATIONS
            else:
                step = MIGRATIONS[current]
                step.upgrade(conn)
                steps = (step,)
            conn.execute(
                insert(schema_migrations),
                [
                    {"version": s.version, "description": s.description, "applied_at": now}
                    for s in steps
                ],
            )


def check_current(engine: Engine) -> int:
    """For a reader, which migrates nothing: `LATEST`, or SchemaVersionError for a database at
    another version (one that is older is migrated by the next writer of this release to open
    it)."""
    with engine.connect() as conn, conn.begin():
        current = current_version(conn)
    if current > LATEST:
        raise _newer(current)
    if current == 0:
        raise SchemaVersionError(
            "the audit database holds no audit tables yet (an audit sink creates them when it "
            "opens the store)"
        )
    if current < LATEST:
        raise SchemaVersionError(
            f"the audit database is at schema version {current}, older than this moderator's "
            f"{LATEST}: reading commands do not migrate it; a writer of this release does when "
            "it opens the store (moderator audit sink)"
        )
    return current


def _newer(current: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the audit database is at schema version {current}, newer than this "
        f"moderator's {LATEST}: upgrade moderator"
    )


def current_version(conn: Connection) -> int:
    """The highest applied version; 0 for an empty database."""
    inspector = inspect(conn)
    if not inspector.has_table(schema_migrations.name):
        if inspector.has_table(audit_records.name):
            raise SchemaVersionError(
                "audit_records exists but schema_migrations does not: not a moderator audit "
                "database (or one from a pre-release build)"
            )
        return 0
    return int(
        conn.execute(select(func.coalesce(func.max(schema_migrations.c.version), 0))).scalar_one()
    )


def schema_differences(conn: Connection) -> list[str]:
    """How the database differs from `schema.py` (tables, columns, indexes); [] when it
    matches. Migration tests assert this after upgrading an old database."""
    inspector = inspect(conn)
    problems: list[str] = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            problems.append(f"missing table {table.name}")
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        want = {c.name for c in table.columns}
        problems += [f"{table.name}: missing column {c}" for c in sorted(want - have)]
        problems += [f"{table.name}: unexpected column {c}" for c in sorted(have - want)]
        have_ix = {
            (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
            for ix in inspector.get_indexes(table.name)
        }
        want_ix = {
            (ix.name, tuple(c.name for c in ix.columns), bool(ix.unique)) for ix in table.indexes
        }
        problems += [f"{table.name}: missing index {ix[0]}" for ix in sorted(want_ix - have_ix)]
        have_uq = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
        want_uq = {
            tuple(c.name for c in con.columns)
            for con in table.constraints
            if isinstance(con, UniqueConstraint)
        }
        problems += [f"{table.name}: missing unique {u}" for u in sorted(want_uq - have_uq)]
    return problems


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
