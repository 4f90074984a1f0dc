"""Generated edits of an audit database, for the property that `verify` reports every edit a
user could see (tests/test_audit_verify_fuzz.py on SQLite, integration/ on PostgreSQL).

An example: restore the template rows, apply one to three edits done straight in SQL (a column,
the stored record, a redaction by hand, a deleted row, a policy document), optionally make the
hashes agree again (of the edited rows, or of whole chains with their recorded heads: what only
the anchor catches), then compare what a user sees before and after (`snapshot`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import event, reject
from hypothesis import strategies as st
from sqlalchemy import (
    Connection,
    Engine,
    String,
    create_engine,
    delete,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError

from moderator.audit.chain.canonical import (
    CanonicalizationError,
    canonical_json,
    columns_hash,
    link_hash,
    record_hash,
)
from moderator.audit.db.retention import redact_expired
from moderator.audit.db.store import AuditStore
from moderator.audit.db.tables import audit_records, chain_heads, policy_versions, stored_time
from moderator.audit.db.writer import restore_policy
from moderator.audit.fields import MalformedRecord, record_fields
from moderator.audit.integrity.anchors import make_anchor
from moderator.audit.integrity.verify import verify
from moderator.audit.models import Anchor
from tests.audit_fixtures import BASE, fill, record, sample_records
from tests.audit_tamper import recompute_chain

R = audit_records.c
TABLES = (audit_records, chain_heads, policy_versions)
RAW_TIMES = ("decided_at", "redacted_at")
RAW_COLUMNS = tuple(type_coerce(c, String()).label(c.name) if c.name in RAW_TIMES else c for c in R)
REDACTION_CLEARS = frozenset({"record", "object_key", "redacted_at"})
Rehash = Literal["none", "rows", "chains"]

_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12
)
_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
# Naive bounds are what hypothesis takes; `timezones` makes the values aware.
_TIME = st.datetimes(
    min_value=datetime(1990, 1, 1),  # noqa: DTZ001
    max_value=datetime(2090, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)

# What a column may be set to, given its template value and the column's values on other rows.
_NOT_NULL_TEXT = ("event_id", "tenant_id", "decision", "topic")
_NULLABLE_TEXT = (
    "object_bucket",
    "object_key",
    "sha256",
    "rating",
    "category",
    "category_code",
    "policy_version",
    "model_engine",
    "model_name",
    "error_code",
    "source",
    "surface",
)


def _column_values(column: str, old: Any, pool: list[Any]) -> st.SearchStrategy[Any]:
    others = st.sampled_from(pool) if pool else st.nothing()
    if column == "event_id":  # unique: another row's would be refused
        base: st.SearchStrategy[Any] = _TEXT
    elif column in _NOT_NULL_TEXT:
        base = _TEXT | others
    elif column in _NULLABLE_TEXT:
        base = st.none() | _TEXT | others
    elif column in ("record_hash", "prev_hash", "row_hash"):
        base = _HEX | others
    elif column in ("policy_hash", "columns_hash"):
        base = st.none() | _HEX | others
    elif column in RAW_TIMES:
        near = (
            st.sampled_from([old + timedelta(microseconds=d) for d in (-1, 1)])
            if old
            else st.nothing()
        )
        base = _TIME | near | others
        if column == "redacted_at":
            base = st.none() | base
    elif column == "score":
        base = st.none() | st.floats(allow_nan=False, allow_infinity=False) | others
    elif column == "model_smoke_test":
        base = st.none() | st.booleans()
    elif column == "policy_elided":
        base = st.booleans()
    else:  # partition, offset, seq
        base = st.integers(0, 12) | st.sampled_from([old - 1, old + 1, old + 100])
    return base.filter(lambda value: value != old)


EDITABLE = (*_NOT_NULL_TEXT, *_NULLABLE_TEXT, "record_hash", "prev_hash", "row_hash")
EDITABLE += ("policy_hash", "columns_hash", *RAW_TIMES, "score", "model_smoke_test")
EDITABLE += ("policy_elided", "partition", "offset", "seq")


@dataclass(frozen=True, repr=False)
class Template:
    """The rows every example starts from."""

    tables: dict[str, list[dict[str, Any]]]
    dialect: str

    def __repr__(self) -> str:  # strategies built from it print it
        return f"Template({len(self.rows)} rows, {self.dialect})"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.tables[audit_records.name]

    @classmethod
    def save(cls, engine: Engine) -> Template:
        with engine.connect() as conn:
            tables = {t.name: [dict(r) for r in conn.execute(select(t)).mappings()] for t in TABLES}
        return cls(tables, engine.dialect.name)

    def restore(self, engine: Engine) -> None:
        with engine.begin() as conn:
            for table in TABLES:
                conn.execute(delete(table))
                if self.tables[table.name]:
                    conn.execute(insert(table), self.tables[table.name])


@dataclass(frozen=True)
class Edit:
    """One change made straight in the database."""

    what: str
    apply: Callable[[Connection], None] = field(repr=False)
    row_id: int | None = None


def _set(row_id: int, **values: Any) -> Callable[[Connection], None]:
    return lambda conn: conn.execute(update(audit_records).where(R.id == row_id).values(**values))


@st.composite
def _column_edit(draw: st.DrawFn, template: Template) -> Edit:
    row = draw(st.sampled_from(template.rows))
    column = draw(st.sampled_from(EDITABLE))
    pool = sorted({r[column] for r in template.rows if r[column] is not None}, key=repr)
    value = draw(_column_values(column, row[column], pool))
    return Edit(
        f"row {row['id']}: {column} = {value!r}", _set(row["id"], **{column: value}), row["id"]
    )


@st.composite
def _raw_time_edit(draw: st.DrawFn, template: Template) -> Edit:
    """A timestamp in a form the store never writes (SQLite keeps any text)."""
    row = draw(st.sampled_from(template.rows))
    column = draw(st.sampled_from(RAW_TIMES))
    value = draw(
        st.sampled_from(["2026-11-29 02:00:00", "2026-11-29T02:00:00Z", "yesterday", ""]) | _TEXT
    )
    raw = type_coerce(value, String())  # past UtcDateTime: the text goes in as it is
    return Edit(
        f"row {row['id']}: raw {column} = {value!r}", _set(row["id"], **{column: raw}), row["id"]
    )


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict) and obj:
        return [p for key, value in obj.items() for p in _leaves(value, (*path, key))]
    if isinstance(obj, list) and obj:
        return [p for i, value in enumerate(obj) for p in _leaves(value, (*path, i))]
    return [path]


def _containers(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of the non-empty objects in `obj`, itself included."""
    found = [path] if isinstance(obj, dict) and obj else []
    if isinstance(obj, dict | list):
        for key, value in obj.items() if isinstance(obj, dict) else enumerate(obj):
            found += _containers(value, (*path, key))
    return found


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _canon(value: Any) -> bytes | None:
    try:
        return canonical_json(value)
    except CanonicalizationError:
        return None


@st.composite
def _changed_json(draw: st.DrawFn, doc: Any) -> Any:
    """`doc` with one leaf changed, one member dropped or one added: never equal to it."""
    changed = json.loads(json.dumps(doc))
    kind = draw(st.sampled_from(["leaf", "drop", "add"]))
    if kind == "leaf":
        path = draw(st.sampled_from(_leaves(changed)))
        old = _at(changed, path)
        value = draw(_SCALAR.filter(lambda v: _canon(v) != _canon(old) or _canon(v) is None))
        if not path:
            return value
        _at(changed, path[:-1])[path[-1]] = value
    elif kind == "drop":
        parent = _at(changed, draw(st.sampled_from(_containers(changed))))
        del parent[draw(st.sampled_from(sorted(parent)))]
    else:
        parent = _at(changed, draw(st.sampled_from(_containers(changed) or [()])))
        name = draw(_TEXT.filter(lambda k: k not in parent))
        parent[name] = draw(_SCALAR)
    return changed


@st.composite
def _dumps(draw: st.DrawFn, doc: Any) -> str:
    """One of the many texts of one JSON value."""
    return json.dumps(
        doc,
        ensure_ascii=draw(st.booleans()),
        sort_keys=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (", ", ": ")])),
    )


@st.composite
def _record_edit(draw: st.DrawFn, template: Template) -> Edit:
    """Change the stored record (or only its text), maybe making the indexed columns agree
    with the new record, as a careful editor would (`rehash` does the hashes)."""
    rows = [r for r in template.rows if r["record"] is not None]
    row = draw(st.sampled_from(rows))
    doc = json.loads(row["record"])
    if draw(st.booleans()):
        doc = draw(_changed_json(doc))
    values: dict[str, Any] = {"record": draw(_dumps(doc))}
    if draw(st.booleans()):
        with suppress(MalformedRecord, OverflowError):
            values.update(record_fields(doc).columns())
    return Edit(
        f"row {row['id']}: record edit {sorted(values)}", _set(row["id"], **values), row["id"]
    )


@st.composite
def _transplant(draw: st.DrawFn, template: Template) -> Edit:
    """Another row's stored record put into this row (a redacted one too)."""
    row = draw(st.sampled_from(template.rows))
    donors = [r for r in template.rows if r["record"] is not None and r["id"] != row["id"]]
    donor = draw(st.sampled_from(donors))
    return Edit(
        f"row {row['id']}: record of row {donor['id']}",
        _set(row["id"], record=donor["record"]),
        row["id"],
    )


@st.composite
def _fake_redaction(draw: st.DrawFn, template: Template) -> Edit:
    row = draw(st.sampled_from(template.rows))
    values: dict[str, Any] = {"record": None, "redacted_at": draw(_TIME)}
    if draw(st.booleans()):
        values["object_key"] = None
    return Edit(
        f"row {row['id']}: redacted by hand {sorted(values)}", _set(row["id"], **values), row["id"]
    )


@st.composite
def _delete(draw: st.DrawFn, template: Template) -> Edit:
    row_id = draw(st.sampled_from([r["id"] for r in template.rows]))
    return Edit(
        f"row {row_id}: deleted",
        lambda conn: conn.execute(delete(audit_records).where(R.id == row_id)),
    )


@st.composite
def _policy_edit(draw: st.DrawFn, template: Template) -> Edit:
    kept = template.tables[policy_versions.name]
    version = draw(st.sampled_from(kept))
    document = draw(_dumps(draw(_changed_json(json.loads(version["document"])))))
    key = version["policy_hash"]
    return Edit(
        f"policy {key[:12]}: document edited",
        lambda conn: conn.execute(
            update(policy_versions)
            .where(policy_versions.c.policy_hash == key)
            .values(document=document)
        ),
    )


def edits(template: Template) -> st.SearchStrategy[tuple[list[Edit], Rehash]]:
    """One to three edits and what hashes are made to agree afterwards."""
    one = (
        _column_edit(template)
        | _record_edit(template)
        | _transplant(template)
        | _fake_redaction(template)
        | _delete(template)
        | _policy_edit(template)
    )
    if template.dialect == "sqlite":
        one = one | _raw_time_edit(template)
    rehash = st.sampled_from(["none", "rows", "chains"])
    return st.tuples(st.lists(one, min_size=1, max_size=3), rehash)


def rehash(engine: Engine, store: AuditStore, how: Rehash, touched: set[int]) -> None:
    """Make hashes agree with the rows as they now are: of the `touched` rows only (each with
    its own prev_hash), or of every chain from its first row on, moving the recorded heads."""
    chains = store.chains()
    if how == "chains":
        for topic, partition in chains:
            recompute_chain(engine, store, topic, partition)
        return
    if how == "none":
        return
    for topic, partition in chains:
        rows = [r for r in store.iter_chain(topic, partition) if r.id in touched]
        with engine.begin() as conn:
            for r in rows:
                if r.unreadable is not None:
                    continue
                try:
                    rh = record_hash(r.record) if r.record is not None else r.record_hash
                    ch = columns_hash({**r.fields.columns(), "offset": r.offset})
                except CanonicalizationError:
                    continue
                row_hash = link_hash(r.prev_hash, rh, r.seq, topic, partition, ch)
                conn.execute(
                    update(audit_records)
                    .where(R.id == r.id)
                    .values(record_hash=rh, columns_hash=ch, row_hash=row_hash)
                )


def snapshot(engine: Engine) -> dict[int, dict[str, Any]]:
    """What a user sees of each row (by row id): every column but the id, timestamps as
    stored, and the record with its policy document put back, canonicalised."""
    with engine.connect() as conn:
        pv = policy_versions.c
        docs = {
            r.policy_hash: r.document for r in conn.execute(select(pv.policy_hash, pv.document))
        }
        rows = conn.execute(select(*RAW_COLUMNS)).mappings().all()
    seen: dict[int, dict[str, Any]] = {}
    for row in rows:
        values = {k: v for k, v in row.items() if k not in ("id", "policy_elided")}
        values["record"] = _visible_record(row, docs)
        seen[row["id"]] = values
    return seen


def _visible_record(row: Mapping[str, Any], docs: Mapping[str, str]) -> Any:
    if row["record"] is None:
        return None
    doc = docs.get(row["policy_hash"]) if row["policy_elided"] and row["policy_hash"] else None
    try:
        return canonical_json(restore_policy(row["record"], doc))
    except (ValueError, CanonicalizationError):
        return ("unreadable", row["record"], doc)


def unexplained(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> list[str]:
    """The rows whose visible values changed other than as retention changes them (record and
    object key cleared, a valid redaction time): what verify must report."""
    changed = []
    for row_id in sorted(before.keys() | after.keys()):
        old, new = before.get(row_id), after.get(row_id)
        if old == new:
            continue
        if old is None or new is None:
            changed.append(f"row {row_id} {'added' if old is None else 'deleted'}")
            continue
        same_kept = all(old[k] == new[k] for k in old if k not in REDACTION_CLEARS)
        if same_kept and _redacted_shape(new):
            continue
        changed.append(f"row {row_id}: {sorted(k for k in old if old[k] != new[k])}")
    return changed


def _redacted_shape(values: Mapping[str, Any]) -> bool:
    if values["record"] is not None or values["object_key"] is not None:
        return False
    try:
        return stored_time(values["redacted_at"]) is not None
    except ValueError:
        return False


def check(
    store: AuditStore,
    engine: Engine,
    template: Template,
    anchor: Anchor,
    changes: list[Edit],
    how: Rehash,
) -> None:
    """The property: from the template, apply `changes` (and `how` rehash); verify against the
    anchor reports tampering exactly when a user would see a change other than a redaction.
    Unless whole chains were rehashed, the recorded heads alone catch it too."""
    template.restore(engine)
    before = snapshot(engine)
    try:
        with engine.begin() as conn:
            for change in changes:
                change.apply(conn)
    except (IntegrityError, DataError):
        reject()  # a unique or type constraint refused the edit: nothing to verify
    rehash(engine, store, how, {c.row_id for c in changes if c.row_id is not None})
    changed = unexplained(before, snapshot(engine))
    report = verify(store, anchor)
    event("visible change" if changed else "no visible change")
    event(f"rehash {how}")
    for problem in report.problems:
        event(f"reported: {problem.kind}")
    if changed:
        assert not report.ok, f"{changes} {how}: changed {changed}, verify found nothing"
        if how != "chains":
            assert not verify(store, None).ok, f"{changes} {how}: only the anchor caught it"
    else:
        assert report.ok, f"{changes} {how}: nothing visible changed, yet {report.problems}"


World = tuple[AuditStore, Engine, Template, Anchor]
"""A store, a second engine for editing it, the template and an anchor over every row."""


def fuzz_records() -> list[dict[str, object]]:
    """The ten sample rows and one whose policy document does not match its hash (so it stays
    in the record instead of policy_versions)."""
    odd = record("a-9", "alpha", BASE + timedelta(minutes=20))
    odd["policy_document"] = copy.deepcopy(odd["policy_document"]) | {"prompt": "changed"}
    return [*sample_records(), odd]


def build(url: str) -> World:
    """The store, a second engine for editing it, the template (4 of 11 rows redacted by
    retention) and an anchor over every row."""
    store = AuditStore.open(url)
    fill(store, fuzz_records())
    redact_expired(store, {"default": 0}, BASE + timedelta(minutes=4))
    engine = create_engine(url)
    template = Template.save(engine)
    assert sum(r["record"] is None for r in template.rows) == 4
    assert not all(r["policy_elided"] for r in template.rows)
    anchor = make_anchor(store)
    assert verify(store, anchor).ok
    return store, engine, template, anchor
