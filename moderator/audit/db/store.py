"""The audit store: SQLite (default, a file) or PostgreSQL through one SQLAlchemy Core path."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    func,
    insert,
    or_,
    select,
    type_coerce,
    union,
    update,
)
from sqlalchemy.engine import URL, RowMapping
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from moderator.audit.db.conflicts import WriteResult
from moderator.audit.db.connect import (
    WRITE,
    create_audit_engine,
    hide_secrets,
    is_memory,
    normalize_url,
    shown_url,
)
from moderator.audit.db.migrations import LATEST, check_current, migrate
from moderator.audit.db.tables import (
    anchors,
    audit_records,
    chain_heads,
    policy_versions,
    schema_migrations,
    stored_time,
)
from moderator.audit.db.writer import prepare, restore_policy, write_batch
from moderator.audit.errors import AuditError, AuditUnavailable, SchemaVersionError
from moderator.audit.fields import PERSONAL_COLUMNS, RecordFields
from moderator.audit.models import (
    Anchor,
    AuditQuery,
    AuditRow,
    ChainHead,
    ChainRow,
    IncomingRecord,
    Page,
)
from moderator.audit.read.cursor import encode_cursor
from moderator.audit.read.query import build_select, to_row

T = audit_records.c
# verify reads timestamps as stored, to hold them to the one form the store writes.
_RAW_TIMES = ("decided_at", "redacted_at")
_CHAIN_COLUMNS = tuple(
    type_coerce(c, String()).label(c.name) if c.name in _RAW_TIMES else c for c in T
)
_UNREADABLE_TIME = datetime.min.replace(tzinfo=UTC)
INSERT_ATTEMPTS = 3
_READ_ONLY = "readonly database"  # SQLite's "attempt to write a readonly database"
_DOC_CACHE = 256
_Docs = dict[str, str | None]


class AuditStore:
    """Audit rows, hash chains, policy versions and anchors. Thread-safe (a connection pool);
    `open` migrates the database. An in-memory store for tests:
    `AuditStore.open("sqlite://", memory=True)`."""

    def __init__(self, engine: Engine, url: URL) -> None:
        self._engine = engine
        self._url = url
        self._canon: dict[str, bytes] = {}  # policy_hash -> canonical document (verified)

    @classmethod
    def open(cls, url: str, *, read_only: bool = False, memory: bool = False) -> AuditStore:
        """Connect (`sqlite:///path`, `postgresql://...`; `sqlite://`, in memory, only with
        `memory`: tests) and migrate; `read_only` (the reading
        commands) opens a SQLite file for reading only and migrates nothing: a database at
        another schema version is refused. Raises ConfigError for a bad URL, AuditUnavailable
        when the database cannot be reached."""
        parsed = normalize_url(url, memory=memory)
        engine = create_audit_engine(parsed, read_only=read_only)
        store = cls(engine, parsed)
        try:
            with store._errors():
                before = check_current(engine) if read_only else migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        if 0 < before < LATEST:  # 0: a new database, created at the latest version
            structlog.get_logger("moderator.audit").warning(
                "audit_schema_migrated", from_version=before, to_version=LATEST
            )
        return store

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, password and secret query parameters hidden."""
        return shown_url(self._url)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    # -- writing ---------------------------------------------------------------------------

    def insert(self, items: Sequence[IncomingRecord]) -> WriteResult:
        """Store a batch in one transaction: skip event_ids already stored (and repeats within
        the batch), chain the rest onto their partitions' heads, keep new policy versions.
        Malformed records are returned in `rejected`, never raised; a skipped record that
        differs from the row kept for its event id in `conflicted`."""
        batch = prepare(items, self._canon)
        for attempt in range(1, INSERT_ATTEMPTS + 1):
            try:
                with self._tx(write=True) as conn:
                    _still_latest(conn)
                    return write_batch(conn, batch)
            except IntegrityError as exc:
                # Another sink committed one of these event_ids on a different partition between
                # our duplicate check and insert: retrying skips it.
                if attempt == INSERT_ATTEMPTS:
                    raise AuditError(f"audit insert kept conflicting: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def record_anchor(self, anchor: Anchor, destination: str) -> int:
        """Note an exported anchor in the `anchors` table; returns its id."""
        heads = json.dumps([h.to_json() for h in sorted(anchor.heads)], separators=(",", ":"))
        with self._tx(write=True) as conn:
            result = conn.execute(
                insert(anchors).values(
                    created_at=anchor.created_at, heads=heads, destination=destination
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def redact(
        self,
        before: datetime,
        now: datetime,
        *,
        tenant_ids: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        chunk: int = 5000,
    ) -> dict[str, int]:
        """Clear the record (and personal columns) of rows decided before `before`, of the given
        tenants (None: every tenant not in `exclude`), in transactions of `chunk` rows. Returns
        rows redacted per tenant. Hashes stay, so the chains still verify."""
        counts: dict[str, int] = {}
        where = [T.decided_at < before, T.redacted_at.is_(None)]
        if tenant_ids is not None:
            where.append(T.tenant_id.in_(list(tenant_ids)))
        if exclude:
            where.append(T.tenant_id.not_in(list(exclude)))
        cleared = {name: None for name in PERSONAL_COLUMNS}
        while True:
            with self._tx(write=True) as conn:
                picked = conn.execute(select(T.id, T.tenant_id).where(*where).limit(chunk)).all()
                if not picked:
                    return counts
                conn.execute(
                    update(audit_records)
                    .where(T.id.in_([r.id for r in picked]))
                    .values(record=None, redacted_at=now, **cleared)
                )
            for row in picked:
                counts[row.tenant_id] = counts.get(row.tenant_id, 0) + 1

    # -- reading ---------------------------------------------------------------------------

    def query(self, q: AuditQuery) -> Page:
        """One page of rows matching `q`, in `q.sort` order (ties by event id); pass
        `next_cursor` in the next query (same filters and sort) for the following page."""
        with self._tx() as conn:
            rows = conn.execute(build_select(q)).mappings().all()
            more = len(rows) > q.limit
            docs: _Docs = {}
            page = [self._row(conn, r, docs) for r in rows[: q.limit]]
        cursor = encode_cursor(page[-1], q) if more else None
        return Page(rows=page, next_cursor=cursor)

    def get(self, event_id: str, *, tenant_ids: Sequence[str] | None = None) -> AuditRow | None:
        """The row of `event_id`; with `tenant_ids` (the HTTP API's token scope; empty: none)
        only when one of those tenants has it. The tenant is a condition of the query, so a row
        of another tenant is never read: it takes no longer to miss than an unknown event id."""
        query = select(audit_records).where(T.event_id == event_id)
        if tenant_ids is not None:
            query = query.where(T.tenant_id.in_(list(tenant_ids)))
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
            return None if row is None else self._row(conn, row, {})

    def policy_version(self, policy_hash: str) -> dict[str, Any] | None:
        """The compiled policy document (prompt, decision table, locations) of a policy hash."""
        with self._tx() as conn:
            doc = self._document(conn, policy_hash, {})
        return None if doc is None else dict(json.loads(doc))

    def policy_documents(self) -> Iterator[tuple[str, bytes]]:
        """Every kept policy version: (policy_hash, the document's stored bytes)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(policy_versions.c.policy_hash, policy_versions.c.document)
            ).all()
        for row in rows:
            yield str(row.policy_hash), str(row.document).encode("utf-8")

    def count(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_records)).scalar_one())

    def models(self) -> list[str]:
        """Every model that decided a stored row, as `--model` names it (`engine:name`)."""
        query = select(T.model_engine, T.model_name).distinct().where(T.model_engine.is_not(None))
        with self._tx() as conn:
            found = conn.execute(query).all()
        return sorted(f"{engine}:{name}" if name else str(engine) for engine, name in found)

    def tenants(self) -> list[str]:
        """Tenants that have rows not yet redacted."""
        with self._tx() as conn:
            query = select(T.tenant_id).distinct().where(T.redacted_at.is_(None))
            return sorted(str(t) for t in conn.execute(query).scalars())

    def chain_heads(self) -> list[ChainHead]:
        """The recorded head (last seq and row_hash) of every chain."""
        with self._tx() as conn:
            rows = conn.execute(select(chain_heads)).all()
        return sorted(ChainHead(r.topic, r.partition, r.seq, r.row_hash) for r in rows)

    def chains(self) -> list[tuple[str, int]]:
        """Every (topic, partition) that has rows or a recorded head."""
        query = union(
            select(T.topic, T.partition).distinct(),
            select(chain_heads.c.topic, chain_heads.c.partition),
        )
        with self._tx() as conn:
            return sorted((str(r[0]), int(r[1])) for r in conn.execute(query))

    def iter_chain(self, topic: str, partition: int, *, chunk: int = 1000) -> Iterator[ChainRow]:
        """The chain's rows in seq order (ties by id), read in chunks: constant memory.
        Policy documents are read afresh by every call (never from an earlier call's cache)."""
        last: tuple[int, int] | None = None
        docs: _Docs = {}
        while True:
            query = select(*_CHAIN_COLUMNS).where(T.topic == topic, T.partition == partition)
            if last is not None:
                query = query.where(or_(T.seq > last[0], and_(T.seq == last[0], T.id > last[1])))
            with self._tx() as conn:
                rows = conn.execute(query.order_by(T.seq, T.id).limit(chunk)).mappings().all()
                out = [self._chain_row(conn, r, docs) for r in rows]
            yield from out
            if len(rows) < chunk:
                return
            last = (out[-1].seq, out[-1].id)

    # -- helpers ---------------------------------------------------------------------------

    def _row(self, conn: Connection, row: RowMapping, docs: _Docs) -> AuditRow:
        try:
            record = self._record(conn, row, docs)
        except ValueError as exc:
            raise AuditError(
                f"audit row {row['event_id']!r}: {_first_line(exc)} (run moderator audit verify)"
            ) from exc
        return to_row(row, record)

    def _chain_row(self, conn: Connection, row: RowMapping, docs: _Docs) -> ChainRow:
        """What verify reads; values no writer stores are kept as `unreadable`, not raised."""
        values = dict(row)
        problems: list[str] = []
        for name in _RAW_TIMES:
            try:
                values[name] = stored_time(row[name])
            except ValueError as exc:
                values[name] = _UNREADABLE_TIME
                problems.append(f"{name}: {exc}")
        try:
            record = self._record(conn, row, docs)
        except ValueError as exc:
            record = None
            problems.append(f"record: {_first_line(exc)}")
        return ChainRow(
            id=row["id"],
            seq=row["seq"],
            record_hash=row["record_hash"],
            prev_hash=row["prev_hash"],
            row_hash=row["row_hash"],
            record=record,
            redacted_at=values["redacted_at"],
            policy_elided=bool(row["policy_elided"]),
            fields=RecordFields(
                **{name: values[name] for name in RecordFields.__dataclass_fields__}
            ),
            offset=row["offset"],
            columns_hash=row["columns_hash"],
            unreadable="; ".join(problems) or None,
        )

    def _record(self, conn: Connection, row: RowMapping, docs: _Docs) -> dict[str, Any] | None:
        if row["record"] is None:
            return None
        doc = None
        if row["policy_elided"] and row["policy_hash"] is not None:
            doc = self._document(conn, row["policy_hash"], docs)
        return restore_policy(row["record"], doc)

    def _document(self, conn: Connection, policy_hash: str, docs: _Docs) -> str | None:
        """A policy document, through the caller's (per-call, bounded) cache."""
        if policy_hash not in docs:
            if len(docs) >= _DOC_CACHE:
                docs.clear()
            docs[policy_hash] = conn.execute(
                select(policy_versions.c.document).where(
                    policy_versions.c.policy_hash == policy_hash
                )
            ).scalar_one_or_none()
        return docs[policy_hash]

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction (committed on success); database failures become
        AuditUnavailable, except integrity errors, which callers handle."""
        with self._errors(), self._engine.connect() as conn:
            if write:
                conn = conn.execution_options(**WRITE)
            with conn.begin():
                yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except (OperationalError, InterfaceError) as exc:
            if _READ_ONLY in str(exc.orig) and not is_memory(self._url):
                # SQLite opens a file it cannot write read-only and keeps it so: the next try
                # opens it again, so that a folder made writable again is written.
                self._engine.dispose()
            raise AuditUnavailable(self._failure(exc.orig)) from exc
        except SQLAlchemyError as exc:
            raise AuditError(self._failure(exc)) from exc

    def _failure(self, exc: object) -> str:
        """A database error as one line, naming the store; secrets the driver echoes masked."""
        return f"audit store {self.url}: {hide_secrets(self._url, _first_line(exc))}"


def _still_latest(conn: Connection) -> None:
    """SchemaVersionError once a newer moderator has migrated the database since this store
    opened it: rows written in this release's shape could then contradict the new one's checks
    (as rows without columns_hash did after migration 3). Checked in each write transaction."""
    version = conn.execute(select(func.max(schema_migrations.c.version))).scalar_one()
    if version is not None and version > LATEST:
        raise SchemaVersionError(
            f"the audit database was migrated to schema version {version} while this "
            f"moderator (schema {LATEST}) was writing to it: stop this release's sinks"
        )


def _first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
