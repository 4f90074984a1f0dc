"""`moderator audit verify` on SQLite: the columns a redacted row keeps are bound into its hash
chain (columns_hash), retention limits, rows stored before schema version 3, and the edits
verify cannot see by design."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from moderator.audit.chain.canonical import GENESIS_HASH, columns_hash, link_hash
from moderator.audit.db.retention import redact_expired
from moderator.audit.db.store import AuditStore
from moderator.audit.fields import RecordFields
from moderator.audit.integrity.anchors import FileAnchorSink, export_anchor
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.errors import ConfigError
from tests.audit_fixtures import BASE, TOPIC, make_db, record
from tests.audit_tamper import recompute_chain, revert_to_version_2, write_as_format_v1
from tests.policy_fixtures import clear_moderator_env

FAKE_REDACTION = (
    "UPDATE audit_records SET record = NULL, object_key = NULL, "
    "redacted_at = '2027-01-01T00:00:00.000000Z'"
)
LATER = BASE + timedelta(days=400)  # every sample row is expired by then


class Db:
    """A SQLite audit database of the ten sample rows (two chains) and an anchor file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = make_db(path)
        self.anchors = path.parent / "anchors.jsonl"
        self.anchor()

    def anchor(self) -> None:
        with AuditStore.open(self.url) as store:
            export_anchor(store, [FileAnchorSink(self.anchors)])

    def sql(self, statement: str, *params: object) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(statement, params)
        conn.close()

    def engine(self) -> Engine:
        return create_engine(self.url)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Db]:
    clear_moderator_env(monkeypatch)
    made = Db(tmp_path / "audit.db")
    monkeypatch.setenv("MODERATOR_AUDIT__URL", made.url)
    monkeypatch.setenv("MODERATOR_AUDIT__ANCHOR_FILE", str(made.anchors))
    yield made


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the forgeries a fake redaction used to hide ----------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("decision", "allow"),  # b-0 was blocked
        ("tenant_id", "alpha"),
        ("event_id", "b-forged"),
        ("decided_at", "2026-11-30T00:00:00.000000Z"),
    ],
)
def test_a_forged_column_on_a_fake_redaction_is_tampering(
    db: Db, capsys: pytest.CaptureFixture[str], column: str, value: str
) -> None:
    db.sql(FAKE_REDACTION + ", " + column + " = ? WHERE event_id = 'b-0'", value)
    code, out, _ = run(capsys, "verify")
    assert code == 3, out
    assert "problem: moderation.audit[1] seq 1 (row id 6, event_id " in out
    assert "edited" in out and out.splitlines()[-1] == "TAMPERING FOUND"


def test_a_real_retention_redaction_verifies(db: Db, capsys: pytest.CaptureFixture[str]) -> None:
    with AuditStore.open(db.url) as store:
        assert sum(redact_expired(store, {"default": 30}, LATER).values()) == 10
    code, out, err = run(capsys, "verify")
    assert code == 0, out
    assert "(10 redacted), 0 problems" in out and "predate" not in err


@pytest.mark.parametrize(
    ("statement", "found"),
    [
        ("UPDATE audit_records SET record = '[1, 2]' WHERE event_id = 'a-3'", "JSON list"),
        ("UPDATE audit_records SET record = 'NaN' WHERE event_id = 'a-3'", "JSON float"),
        (
            "UPDATE audit_records SET record = '{\"a\": NaN}' WHERE event_id = 'a-3'",
            "not a JSON number",
        ),
        ("UPDATE audit_records SET record = '{' WHERE event_id = 'a-3'", "unreadable record"),
        (
            "UPDATE audit_records SET decided_at = '2026-11-29 02:06:00' WHERE event_id = 'a-3'",
            "unreadable decided_at",
        ),
        (
            "UPDATE audit_records SET redacted_at = 'soon' WHERE event_id = 'a-3'",
            "unreadable redacted_at",
        ),
    ],
)
def test_values_no_writer_stores_are_tampering_not_a_crash(
    db: Db, capsys: pytest.CaptureFixture[str], statement: str, found: str
) -> None:
    db.sql(statement)
    code, out, err = run(capsys, "verify")
    assert code == 3, (out, err)
    assert "moderation.audit[0] seq 4 " in out and found in out


def test_a_policy_document_deleted_from_policy_versions_is_named_as_such(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(db.path) as conn:
        key = conn.execute("SELECT policy_hash FROM policy_versions LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM policy_versions WHERE policy_hash = ?", (key,))
    conn.close()
    code, out, _ = run(capsys, "verify")
    assert code == 3, out
    assert f"edited: its policy document {key[:16]} is not in policy_versions" in out
    assert "no longer hashes" not in out


def test_a_wrong_type_where_verify_cannot_place_the_row_is_could_not_verify(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    db.sql("UPDATE audit_records SET partition = 'abc' WHERE event_id = 'a-1'")
    code, out, err = run(capsys, "verify")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1].startswith("moderator: could not verify: a stored value has a type")


# -- retention limits --------------------------------------------------------------------------


def test_retention_days_too_large_is_one_line_exit_2(
    db: Db, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODERATOR_AUDIT__RETENTION_DAYS", json.dumps({"default": 999999999}))
    for args in (("retention",), ("retention", "--dry-run")):
        code, out, err = run(capsys, *args)
        assert (code, out) == (2, "")
        assert len(err.strip().splitlines()) == 1
        assert "audit.retention_days: 'default' must be 0..36500 days" in err
        assert err.rstrip().endswith("(from environment MODERATOR_AUDIT__RETENTION_DAYS)"), err
        assert "Traceback" not in err


def test_retention_checks_its_days_before_redacting_anything(db: Db) -> None:
    with AuditStore.open(db.url) as store:
        for days in (999999999, 36501, -1):
            with pytest.raises(ConfigError, match=r"audit\.retention_days\['beta'\]"):
                redact_expired(store, {"alpha": 0, "beta": days}, LATER)
        assert store.tenants() == ["alpha", "beta"]  # nothing redacted
        assert redact_expired(store, {"default": 36500}, LATER) == {}


# -- the hash definitions ----------------------------------------------------------------------


def test_columns_hash_and_format_v2_row_hash_definitions() -> None:
    fields = RecordFields(
        event_id="e-1",
        tenant_id="t",
        decided_at=datetime(2026, 11, 29, 2, 0, 1, 234000, tzinfo=UTC),
        decision="block",
        object_key="personal/key.jpg",
        score=0.5,
        model_smoke_test=False,
    )
    raw = (
        '{"category":null,"category_code":null,"columns":"moderator.audit-columns/v1",'
        '"decided_at":"2026-11-29T02:00:01.234000Z","decision":"block","error_code":null,'
        '"event_id":"e-1","model_engine":null,"model_name":null,"model_smoke_test":false,'
        '"object_bucket":null,"offset":7,"policy_hash":null,"policy_version":null,'
        '"rating":null,"score":0.5,"sha256":null,"source":null,"surface":null,"tenant_id":"t"}'
    )
    digest = columns_hash({**fields.columns(), "offset": 7})
    assert digest == hashlib.sha256(raw.encode()).hexdigest()  # object_key is not covered
    assert columns_hash({**fields.columns(), "object_key": None, "offset": 7}) == digest
    rh = "ab" * 32
    v2 = (
        '{"chain":"moderator.audit-chain/v2","columns_hash":"' + digest + '","partition":3,'
        '"prev_hash":"' + GENESIS_HASH + '","record_hash":"' + rh + '","seq":1,"topic":"t"}'
    )
    assert link_hash(GENESIS_HASH, rh, 1, "t", 3, digest) == hashlib.sha256(v2.encode()).hexdigest()
    assert link_hash(GENESIS_HASH, rh, 1, "t", 3, digest) != link_hash(GENESIS_HASH, rh, 1, "t", 3)


# -- rows stored before schema version 3 -------------------------------------------------------


def as_stored_by_version_2(db: Db) -> None:
    """The sample rows in chain format v1, the database at schema version 2."""
    engine = db.engine()
    with engine.begin() as conn:
        for partition in (0, 1):
            write_as_format_v1(conn, TOPIC, partition)
    revert_to_version_2(engine)
    engine.dispose()


@pytest.fixture
def legacy(db: Db) -> Db:
    """The sample rows as moderator stored them before schema version 3, half redacted, then
    opened (migrated) by this version; the anchor is taken before the upgrade."""
    as_stored_by_version_2(db)
    db.anchors.unlink()
    db.anchor()  # opens the store: migration 3
    with AuditStore.open(db.url) as store:
        assert redact_expired(store, {"default": 0}, BASE + timedelta(minutes=4)) == {
            "alpha": 2,
            "beta": 2,
        }
    return db


def test_rows_stored_before_version_3_verify_with_a_warning(
    legacy: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "verify")
    assert code == 0, out
    assert out.splitlines()[-1] == "intact"
    assert err.splitlines()[-1] == (
        "moderator: warning: 10 rows predate schema version 3 (chain format v1): the hash chain "
        "does not cover their offset, nor the kept columns (decision, tenant, time, ...) of the 4 "
        "redacted among them"
    )
    with AuditStore.open(legacy.url) as store:  # later rows are format v2 on the same chain
        store.insert([IncomingRecord(TOPIC, 0, 5, record("a-6", "alpha", BASE))])
    legacy.sql(FAKE_REDACTION + ", decision = 'block' WHERE seq = 6 AND partition = 0")
    code, out, _ = run(capsys, "verify", "--anchor-file", str(legacy.anchors))
    assert code == 3 and "moderation.audit[0] seq 6" in out


def test_a_legacy_row_cannot_be_downgraded_into(
    legacy: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    """A format v2 row whose columns_hash is removed is not taken for a legacy row: its hash
    says format v2 (the first such row), or it follows one (`downgraded`, and then it is not
    counted among the rows that predate schema version 3)."""
    with AuditStore.open(legacy.url) as store:
        store.insert([IncomingRecord(TOPIC, 0, n, record(f"a-{n}", "alpha", BASE)) for n in (6, 7)])
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    before = capsys.readouterr().err
    legacy.sql("UPDATE audit_records SET columns_hash = NULL WHERE seq = 7 AND partition = 0")
    assert main(["audit", "verify"]) == 3
    out, err = capsys.readouterr()
    assert "seq 7 " in out and "downgraded" in out
    assert err == before  # the same count of legacy rows
    legacy.sql("UPDATE audit_records SET columns_hash = NULL WHERE seq = 6 AND partition = 0")
    assert main(["audit", "verify"]) == 3
    assert "seq 6 " in capsys.readouterr().out


# -- what verify cannot see, by design ---------------------------------------------------------


def test_a_legacy_redacted_rows_columns_are_not_covered(
    legacy: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy.sql("UPDATE audit_records SET decision = 'allow' WHERE event_id = 'b-0'")
    code, _, err = run(capsys, "verify")
    assert code == 0 and "of the 4 redacted among them" in err


@pytest.mark.parametrize(
    "statements",
    [
        # a redacted row's redaction time: retention writes it after the row was chained
        (
            FAKE_REDACTION + " WHERE event_id = 'a-2'",
            "UPDATE audit_records SET redacted_at = '2030-01-01T00:00:00.000000Z' "
            "WHERE event_id = 'a-2'",
        ),
        # a redaction done by hand is the same edit as retention's
        (FAKE_REDACTION + " WHERE event_id = 'a-3'",),
        # the store's row id is a storage key, not an audit fact
        ("UPDATE audit_records SET id = 1000 WHERE event_id = 'a-4'",),
    ],
    ids=["redacted_at", "redaction", "id"],
)
def test_edits_verify_does_not_report(
    db: Db, capsys: pytest.CaptureFixture[str], statements: tuple[str, ...]
) -> None:
    for statement in statements:
        db.sql(statement)
    code, out, _ = run(capsys, "verify")
    assert code == 0, out


def test_rows_after_the_last_anchor_can_be_rewritten_with_their_chain(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    with AuditStore.open(db.url) as store:
        store.insert([IncomingRecord(TOPIC, 0, 5, record("a-6", "alpha", BASE))])
    db.sql("UPDATE audit_records SET decision = 'block' WHERE event_id = 'a-6'")
    db.sql(
        "UPDATE audit_records SET record = json_set(record, '$.verdict.decision', 'block') "
        "WHERE event_id = 'a-6'"
    )
    assert run(capsys, "verify")[0] == 3
    engine = db.engine()
    with AuditStore.open(db.url) as store:
        recompute_chain(engine, store, TOPIC, 0)
    engine.dispose()
    code, out, _ = run(capsys, "verify")
    assert code == 0, out  # the anchor ends at seq 5: what follows is the writer's word
    db.anchor()
    db.sql("UPDATE audit_records SET decision = 'allow' WHERE event_id = 'a-6'")
    assert run(capsys, "verify")[0] == 3


def test_lines_after_the_anchor_used_that_are_not_anchors_are_named(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    """The newest anchor line cut short (a crash while writing, or damage): verify goes by the
    one before, as it must, and says so instead of passing over it in silence."""
    lines = db.anchors.read_bytes()
    db.anchor()
    db.anchors.write_bytes(lines + db.anchors.read_bytes()[len(lines) :][:40])
    code, out, err = run(capsys, "verify")
    assert code == 0 and out.splitlines()[-1] == "intact"
    assert err.startswith(
        f"moderator: warning: anchor file {db.anchors}: the last 1 line(s) are not anchors"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing.jsonl", "could not verify: anchor file {path}: no such file"),
        ("", "audit.anchor_file: empty: name a file, or leave the setting out"),
    ],
)
def test_an_anchor_file_that_is_not_there_is_named_as_such(
    db: Db,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    message: str,
) -> None:
    path = db.path.parent / value if value else value
    monkeypatch.setenv("MODERATOR_AUDIT__ANCHOR_FILE", str(path))
    code, _, err = run(capsys, "verify")
    assert code in (1, 2) and message.format(path=path) in err


def test_a_long_verify_shows_its_progress_on_stderr(
    db: Db, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most every 5 s (here: every 2 rows, at once), so a short verify prints none."""
    from moderator.audit.integrity import verify as verify_module
    from moderator.cli import progress

    code, out, err = run(capsys, "verify")
    assert code == 0 and "rows checked, chain" not in err
    monkeypatch.setattr(verify_module, "PROGRESS_ROWS", 2)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    code, out, err = run(capsys, "verify")
    assert code == 0 and out.splitlines()[-1] == "intact"
    lines = [line for line in err.splitlines() if line.startswith("verify: ")]
    assert lines[0].startswith("verify: 2 rows checked, chain 1 of 2 (")
    assert " chain 2 of 2 (" in lines[-1]
    counts = [int(line.split()[1].replace(",", "")) for line in lines]
    assert counts == sorted(counts) and counts[-1] <= 10


def test_a_tampered_chain_is_checked_to_its_end_and_counts_read_as_words(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    db.sql("UPDATE audit_records SET columns_hash = NULL WHERE seq = 1 AND partition = 0")
    db.sql(
        "UPDATE audit_records SET decision = CASE decision WHEN 'allow' THEN 'block' "
        "ELSE 'allow' END WHERE seq = 4 AND partition = 0"
    )
    code, out, err = run(capsys, "verify")
    assert code == 3 and out.splitlines()[-1] == "TAMPERING FOUND"
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert [p.split(" seq ")[1].split()[0] for p in problems] == ["1", "4"]  # both edits
    assert "10 rows checked" in out and ", 2 problems" in out
    assert err.splitlines()[-1] == (
        "moderator: warning: 1 row predates schema version 3 (chain format v1): the hash chain "
        "does not cover their offset"
    )


@pytest.mark.usefixtures("info_logs")
def test_opening_a_store_of_an_earlier_schema_logs_its_migration(db: Db) -> None:
    from structlog.testing import capture_logs

    from moderator.audit.db.migrations import LATEST

    as_stored_by_version_2(db)
    with capture_logs() as logs, AuditStore.open(db.url):
        pass
    with capture_logs() as again, AuditStore.open(db.url):  # at the latest version: no line
        pass
    migrated = [line for line in logs if line["event"] == "audit_schema_migrated"]
    assert migrated == [
        {
            "event": "audit_schema_migrated",
            "from_version": 2,
            "to_version": LATEST,
            "log_level": "warning",
        }
    ]
    assert not [line for line in again if line["event"] == "audit_schema_migrated"]


def test_a_sink_stops_writing_once_a_newer_release_migrated_the_store(db: Db) -> None:
    """A store opened before a newer release migrated the database refuses its next write,
    instead of adding rows in its own, older shape."""
    from moderator.audit.db.migrations import LATEST
    from moderator.audit.errors import SchemaVersionError

    with AuditStore.open(db.url) as store:
        store.insert([IncomingRecord(TOPIC, 3, 1, record("n-1", "alpha", BASE))])  # still fine
        db.sql(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            LATEST + 1,
            "a newer release",
            "2027-01-01 00:00:00",
        )
        with pytest.raises(SchemaVersionError, match=rf"migrated to schema version {LATEST + 1}"):
            store.insert([IncomingRecord(TOPIC, 3, 2, record("n-2", "alpha", BASE))])
    with sqlite3.connect(db.path) as conn:
        stored = conn.execute("SELECT event_id FROM audit_records WHERE event_id LIKE 'n-%'")
        assert [row[0] for row in stored] == ["n-1"]
    conn.close()
