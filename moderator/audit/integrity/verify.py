"""`moderator audit verify`: walk every hash chain and hold it to its recorded head and the
latest exported anchor. The per-chain walk (`check_chain`) is pure.

Per row, in seq order, the first of these that fails is the row's problem (the walk goes on):
- `edited` (first): a stored value that no writer produces (a record that is not a JSON object,
  a timestamp in another form);
- `unredacted_null`: the record is NULL but redacted_at is not set;
- `edited`: the stored record (its policy document restored) no longer hashes to record_hash,
  or an indexed column (decision, category, ...) differs from the record, or the columns a
  redacted row keeps (and the offset) no longer hash to columns_hash, or the row is marked
  redacted but still holds what redaction removes (the record, `fields.PERSONAL_COLUMNS`);
- `downgraded`: a row without columns_hash (chain format v1) after one with it: only rows
  stored before schema version 3 may lack it;
- `reordered` / `row_hash`: row_hash does not cover this row's seq, prev_hash, record_hash and
  columns_hash (when it covers a nearby seq instead, the row was moved there);
- `gap`: seq is not the previous seq + 1 (rows deleted);
- `link`: prev_hash is not the previous row's row_hash (rows deleted, inserted or swapped);
- `anchor_mismatch` / `head_mismatch`: the row at the anchored (or recorded) head's seq has
  another row_hash: the chain was rewritten since (wholesale recomputation is caught here);
- `truncated`: the chain ends before the anchored (or recorded) head.
Policy versions must hash to their key.

Rows stored before schema version 3 (format v1, no columns_hash) are checked as before: links,
record hash, columns against the record. Their offset is not covered, and once redacted their
kept columns are not either: `VerifyReport.rows_legacy` / `rows_uncovered` count them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from moderator.audit.chain.canonical import (
    GENESIS_HASH,
    CanonicalizationError,
    canonical_json,
    columns_hash,
    link_hash,
    record_hash,
    sha256_hex,
)
from moderator.audit.chain.jcs import Raw
from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditError
from moderator.audit.fields import PERSONAL_COLUMNS, MalformedRecord, record_fields
from moderator.audit.models import Anchor, ChainHead, ChainRow

EXIT_INTACT = 0
EXIT_TAMPERED = 3
EXIT_UNVERIFIABLE = 1  # raised as AuditUnavailable / AuditError; the CLI maps it
MOVE_SEARCH = 64  # how far from its seq a moved row is looked for
MAX_LISTED = 20  # problems listed per chain; the rest are counted

Kind = Literal[
    "edited",
    "reordered",
    "row_hash",
    "gap",
    "link",
    "anchor_mismatch",
    "head_mismatch",
    "truncated",
    "unredacted_null",
    "downgraded",
    "policy_version",
]


@dataclass(frozen=True)
class Problem:
    """A broken link of one chain (or a bad policy version: topic None)."""

    kind: Kind
    detail: str
    topic: str | None = None
    partition: int | None = None
    seq: int | None = None
    row_id: int | None = None
    event_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.topic}[{self.partition}]" if self.topic is not None else "policy_versions"
        row = f" seq {self.seq}" if self.seq is not None else ""
        ident = f" (row id {self.row_id}, event_id {self.event_id})" if self.row_id else ""
        return f"{where}{row}{ident}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainResult:
    """One chain's walk. `problems`: its broken links in seq order, the first MAX_LISTED;
    `unlisted` counts the rest. `problem`: the first."""

    rows_checked: int
    rows_redacted: int
    last_seq: int
    problems: tuple[Problem, ...] = ()
    rows_legacy: int = 0  # chain format v1: stored before schema version 3
    rows_uncovered: int = 0  # of those, redacted: their kept columns are not covered
    unlisted: int = 0

    @property
    def problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True)
class VerifyReport:
    problems: tuple[Problem, ...]
    rows_checked: int
    rows_redacted: int = 0
    chains: int = 0
    anchor: Anchor | None = None
    heads: tuple[ChainHead, ...] = field(default=())
    rows_legacy: int = 0
    rows_uncovered: int = 0
    unlisted: int = 0  # problems past each chain's first MAX_LISTED, counted only

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return EXIT_INTACT if self.ok else EXIT_TAMPERED


Progress = Callable[[int, int, int, str], None]
"""Told every PROGRESS_ROWS rows: rows checked so far, the chain's number (from 1), chains in
all, and the chain (`topic[partition]`)."""
PROGRESS_ROWS = 10_000


def verify(
    store: AuditStore, anchor: Anchor | None, progress: Progress | None = None
) -> VerifyReport:
    """Walk every chain (streaming) and every policy version. Database failures raise
    AuditUnavailable/AuditError ("could not verify", exit 1), never a report; so does a value
    of the wrong type where the walk cannot place the row (SQLite stores any type anywhere)."""
    try:
        return _verify(store, anchor, progress)
    except (TypeError, ValueError) as exc:
        raise AuditError(
            f"a stored value has a type no writer stores (edited in the database?): {exc}"
        ) from exc


def _verify(store: AuditStore, anchor: Anchor | None, progress: Progress | None) -> VerifyReport:
    problems: list[Problem] = [
        Problem("policy_version", f"document of {key} hashes to {sha256_hex(data)}")
        for key, data in store.policy_documents()
        if sha256_hex(data) != key
    ]
    recorded = {(h.topic, h.partition): h for h in store.chain_heads()}
    anchored = {(h.topic, h.partition): h for h in (anchor.heads if anchor else ())}
    chains = sorted(set(store.chains()) | set(anchored))
    checked = redacted = legacy = uncovered = unlisted = 0
    for number, (topic, partition) in enumerate(chains, 1):
        targets: list[tuple[Literal["anchor", "head"], ChainHead]] = []
        if (topic, partition) in anchored:
            targets.append(("anchor", anchored[(topic, partition)]))
        if (topic, partition) in recorded:
            targets.append(("head", recorded[(topic, partition)]))
        rows = store.iter_chain(topic, partition)
        if progress is not None:
            rows = _told(rows, progress, checked, (number, len(chains), f"{topic}[{partition}]"))
        result = check_chain(topic, partition, rows, targets)
        checked += result.rows_checked
        redacted += result.rows_redacted
        legacy += result.rows_legacy
        uncovered += result.rows_uncovered
        unlisted += result.unlisted
        problems.extend(result.problems)
    return VerifyReport(
        problems=tuple(problems),
        rows_checked=checked,
        rows_redacted=redacted,
        chains=len(chains),
        anchor=anchor,
        heads=tuple(sorted(recorded.values())),
        rows_legacy=legacy,
        rows_uncovered=uncovered,
        unlisted=unlisted,
    )


def check_chain(
    topic: str,
    partition: int,
    rows: Iterable[ChainRow],
    targets: Iterable[tuple[Literal["anchor", "head"], ChainHead]] = (),
) -> ChainResult:
    """Walk one chain in seq order to its end. After a broken link the walk goes on from the
    row found there (its seq and row_hash), so that every edited, missing or moved row is
    reported, not only the first: one edit may show as two problems (a row and its link)."""
    pending = {name: head for name, head in targets if head.seq > 0}
    canon: dict[str, bytes] = {}  # policy_hash -> canonical document, for this walk only
    checked = redacted = legacy = uncovered = last_seq = found = 0
    listed: list[Problem] = []
    prev_hash = GENESIS_HASH
    v2_seen = False

    def result() -> ChainResult:
        return ChainResult(
            checked, redacted, last_seq, tuple(listed), legacy, uncovered, found - len(listed)
        )

    for row in rows:
        checked += 1
        redacted += row.record is None
        if row.columns_hash is None and not v2_seen:  # after format v2 rows: `downgraded`
            legacy += 1
            uncovered += row.record is None
        problem = _check_row(topic, partition, row, last_seq, prev_hash, canon, v2_seen)
        for name, head in list(pending.items()):
            if problem is None and head.seq == row.seq:
                del pending[name]
                if head.row_hash != row.row_hash:
                    problem = _problem(
                        topic,
                        partition,
                        row,
                        "anchor_mismatch" if name == "anchor" else "head_mismatch",
                        f"row_hash {row.row_hash[:16]}... differs from the {_label(name)} "
                        f"{head.row_hash[:16]}...: the chain was rewritten since",
                    )
        if problem is not None:
            found += 1
            if len(listed) < MAX_LISTED:
                listed.append(problem)
        last_seq, prev_hash = row.seq, row.row_hash
        v2_seen = v2_seen or row.columns_hash is not None
    for name, head in pending.items():
        if head.seq > last_seq:
            detail = f"the chain ends at seq {last_seq} but the {_label(name)} is at seq {head.seq}"
            found += 1
            if len(listed) < MAX_LISTED:
                listed.append(Problem("truncated", detail, topic, partition, last_seq + 1))
            break
    return result()


def _check_row(
    topic: str,
    partition: int,
    row: ChainRow,
    last_seq: int,
    prev_hash: str,
    canon: dict[str, bytes],
    v2_seen: bool,
) -> Problem | None:
    if row.unreadable is not None:
        return _problem(topic, partition, row, "edited", f"unreadable {row.unreadable}")
    if row.record is None and row.redacted_at is None:
        return _problem(
            topic, partition, row, "unredacted_null", "record removed without redaction"
        )
    edited = _redaction(row) or (_edited(row, canon) if row.record is not None else None)
    edited = edited or _columns_edited(row)
    if edited is not None:
        return _problem(topic, partition, row, "edited", edited)
    if row.columns_hash is None and v2_seen:
        detail = (
            "no columns_hash (chain format v1) after rows that have one: "
            "the row was rewritten to escape the columns check"
        )
        return _problem(topic, partition, row, "downgraded", detail)
    if _link(row, row.seq, topic, partition) != row.row_hash:
        moved = _moved_from(topic, partition, row)
        if moved is not None:
            detail = f"this row was written as seq {moved}: rows reordered, deleted or inserted"
            return _problem(topic, partition, row, "reordered", detail)
        detail = "row_hash does not cover this row's seq, prev_hash, record_hash and columns_hash"
        return _problem(topic, partition, row, "row_hash", detail)
    if row.seq != last_seq + 1:
        detail = f"expected seq {last_seq + 1}, found {row.seq}: rows missing (deleted)"
        return _problem(topic, partition, row, "gap", detail)
    if row.prev_hash != prev_hash:
        detail = (
            f"prev_hash is not the row_hash of seq {last_seq}: rows deleted, inserted or swapped"
        )
        return _problem(topic, partition, row, "link", detail)
    return None


def _redaction(row: ChainRow) -> str | None:
    """A row marked redacted must hold nothing that redaction removes."""
    if row.redacted_at is None:
        return None
    if row.record is not None:
        return "redacted_at is set but the record is still there"
    kept = sorted(name for name in PERSONAL_COLUMNS if getattr(row.fields, name) is not None)
    if kept:
        return f"redacted, yet column {', '.join(kept)} still holds a value"
    return None


def _columns_edited(row: ChainRow) -> str | None:
    """The kept columns and the offset against columns_hash (rows of format v2)."""
    if row.columns_hash is None:
        return None
    try:
        digest = columns_hash({**row.fields.columns(), "offset": row.offset})
    except CanonicalizationError as exc:
        return f"a kept column holds a value no writer stores: {exc}"
    if digest != row.columns_hash:
        return (
            "a column kept on redaction (decision, tenant_id, decided_at, ..., offset) or "
            "columns_hash was changed: they no longer match"
        )
    return None


def _link(row: ChainRow, seq: int, topic: str, partition: int) -> str:
    return link_hash(row.prev_hash, row.record_hash, seq, topic, partition, row.columns_hash)


def _record_hash(row: ChainRow, canon: dict[str, bytes]) -> str:
    """record_hash of the restored record; a restored policy document (the same text for every
    row of one walk) is serialised once."""
    record = row.record
    assert record is not None
    key = row.fields.policy_hash
    if not row.policy_elided or key is None or "policy_document" not in record:
        return record_hash(record)
    if key not in canon:
        canon[key] = canonical_json(record["policy_document"])
    return sha256_hex(canonical_json({**record, "policy_document": Raw(canon[key])}))


def _edited(row: ChainRow, canon: dict[str, bytes]) -> str | None:
    assert row.record is not None
    if row.policy_elided and "policy_document" not in row.record:
        key = row.fields.policy_hash or "(none)"
        return f"its policy document {key[:16]} is not in policy_versions (deleted there?)"
    try:
        digest = _record_hash(row, canon)
    except CanonicalizationError as exc:
        return f"the stored record holds what no writer stores: {exc}"
    if digest != row.record_hash:
        also = " or its policy_versions document" if row.policy_elided else ""
        return f"the record{also} was changed: it no longer hashes to record_hash"
    try:
        derived = record_fields(row.record)
    except MalformedRecord as exc:
        return f"the stored record cannot be read: {exc}"
    stored = row.fields.columns()
    changed = [name for name, value in derived.columns().items() if stored[name] != value]
    if changed:
        return f"column {', '.join(changed)} differs from the record"
    return None


def _moved_from(topic: str, partition: int, row: ChainRow) -> int | None:
    for distance in range(1, MOVE_SEARCH + 1):
        for seq in (row.seq - distance, row.seq + distance):
            if seq > 0 and _link(row, seq, topic, partition) == row.row_hash:
                return seq
    return None


def _problem(topic: str, partition: int, row: ChainRow, kind: Kind, detail: str) -> Problem:
    return Problem(kind, detail, topic, partition, row.seq, row.id, row.fields.event_id)


def _label(name: str) -> str:
    return "anchor" if name == "anchor" else "recorded chain head"


def _told(
    rows: Iterable[ChainRow], progress: Progress, before: int, where: tuple[int, int, str]
) -> Iterator[ChainRow]:
    """`rows`, telling `progress` every PROGRESS_ROWS rows (`before` rows were checked in the
    chains before this one)."""
    for count, row in enumerate(rows, 1):
        if count % PROGRESS_ROWS == 0:
            progress(before + count, *where)
        yield row
