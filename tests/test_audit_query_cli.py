"""`moderator audit query` (formats, filters, cursor paging, bad flags) and `audit verify`
(exit 0 intact, 3 tampered, 1 could not verify)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.integrity.anchors import FileAnchorSink, export_anchor
from moderator.audit.models import AuditQuery
from moderator.audit.read.cursor import filters_digest
from moderator.audit.read.rows import SCALAR_COLUMNS
from moderator.cli.main import main
from moderator.events.upload import TENANT_ID_RULE
from tests.audit_fixtures import ALPHA, BETA, make_db, policy
from tests.policy_fixtures import clear_moderator_env

ALL_EVENTS = {f"a-{i}" for i in range(6)} | {f"b-{i}" for i in range(4)}


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    path = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", make_db(path))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def query_events(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    code, out, err = run(capsys, "query", "--format", "json", *args)
    assert code == 0, err
    return [json.loads(line)["event_id"] for line in out.splitlines()]


# -- formats -------------------------------------------------------------------------------


def test_table_is_aligned_with_shortened_keys(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "query")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 11
    header = lines[0].split()
    assert header == [
        "decided_at",
        "tenant",
        "event_id",
        "object",
        "decision",
        "category",
        "score",
        "policy",
        "model",
        "error",
    ]
    column = lines[0].index("decision")
    assert all(line[column - 2 : column] == "  " for line in lines[1:])
    first = lines[1]  # newest first: a-5, whose long key is shortened
    assert first.startswith("2026-11-29T02:09:00.000Z  alpha  ")
    assert "..." in first and "photo.jpg" in first and "deep/" * 20 not in first
    assert "O4" in out and " 0.91 " in out and "corrupt_image" in out and "nudenet:320n" in out
    assert policy(ALPHA).version in out
    assert err == ""


def test_json_lines_carry_columns_and_the_full_record(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "query", "--format", "json", "--event-id", "b-0")
    assert code == 0
    (line,) = out.splitlines()
    doc = json.loads(line)
    assert doc["tenant_id"] == BETA and doc["decision"] == "block" and doc["category"]
    assert doc["decided_at"] == "2026-11-29T02:01:00Z"
    assert doc["record"]["verdict"]["event_id"] == "b-0"
    assert doc["record"]["policy_document"] == policy(BETA).document
    assert set(SCALAR_COLUMNS) <= set(doc)


def test_csv_has_a_header_and_no_record(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "--format", "csv", "--tenant", BETA)
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert tuple(rows[0]) == SCALAR_COLUMNS and "record" not in rows[0]
    assert len(rows) == 5
    by_name = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert {r["tenant_id"] for r in by_name} == {BETA}
    assert {r["error_code"] for r in by_name} == {"", "engine_timeout"}


def test_no_rows_is_not_an_error(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "query", "--since", "2030-01-01")
    assert (code, out) == (0, "")
    assert "no matching" in err


# -- filters -------------------------------------------------------------------------------


def test_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(query_events(capsys, "--tenant", BETA)) == {"b-0", "b-1", "b-2", "b-3"}
    assert query_events(capsys, "--decision", "block") == ["a-1", "b-0"]
    assert query_events(capsys, "--category", "O4", "--tenant", ALPHA) == ["a-1"]
    assert query_events(capsys, "--category", "O4: Nudity Content") == ["a-1", "b-0"]
    assert query_events(capsys, "--model", "nudenet") == ["a-3"]
    assert query_events(capsys, "--model", "fake:org/fake-guard", "--tenant", BETA) == [
        "b-3",
        "b-2",
        "b-1",
        "b-0",
    ]
    assert query_events(capsys, "--object-key", "beta/2026/11/29/b-1.jpg") == ["b-1"]
    assert query_events(capsys, "--policy-version", policy(BETA).hash, "--decision", "review") == [
        "b-2"
    ]
    window = ("--since", "2026-11-29T02:02:00", "--until", "2026-11-29T03:05:00+01:00")
    assert query_events(capsys, *window, "--sort", "decided_at") == ["a-1", "b-1", "a-2"]
    assert len(query_events(capsys, "--since", "2026-11-29", "--until", "2026-11-30")) == 10
    sha = json.loads(run(capsys, "query", "--format", "json", "--event-id", "a-2")[1])["sha256"]
    assert query_events(capsys, "--sha256", sha.upper()) == ["a-2"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--since", "yesterday"), "--since"),
        (("--until", "2026-13-01"), "--until"),
        (("--since", "2026-11-30", "--until", "2026-11-29"), "--until"),
        (("--decision", "maybe"), "--decision"),
        (("--category", "O42"), "--category"),
        (("--sha256", "abc"), "--sha256"),
        (("--policy-version", "xyz"), "--policy-version"),
        (("--tenant", "Not A Tenant"), "--tenant"),
        (("--event-id", "bad id"), "--event-id"),
        (("--model", ":name"), "--model"),
        (("--limit", "0"), "--limit"),
        (("--limit", "1001"), "--limit"),
        (("--sort", "score"), "--sort"),
        (("--cursor", "not-a-cursor"), "--cursor"),
    ],
)
def test_bad_flag_values_exit_2_naming_the_flag(
    db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], flag: str
) -> None:
    code, out, err = run(capsys, "query", *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"moderator: {flag}: ")


def test_a_tenant_in_capitals_is_named_in_lowercase(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "query", "--tenant", "Kids")
    assert (code, out) == (2, "")
    assert err == (
        f"moderator: --tenant: expected a tenant id ({TENANT_ID_RULE}), "
        "got 'Kids'; did you mean 'kids'?\n"
    )
    code, _, err = run(capsys, "query", "--tenant", "ki ds")
    assert code == 2 and "did you mean" not in err


def test_a_bad_cursor_points_at_what_the_previous_page_printed(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints `next: --cursor C`; `next_cursor` is the HTTP API's word for it."""
    code, out, err = run(capsys, "query", "--cursor", "garbage")
    assert (code, out) == (2, "")
    assert err == (
        "moderator: --cursor: invalid cursor (pass the value the previous page printed after "
        "`next: --cursor`)\n"
    )


def test_a_missing_database_file_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    missing = tmp_path / "nope" / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{missing}")
    code, _, err = run(capsys, "query")
    assert code == 1 and "no such database file" in err
    assert not missing.exists()  # a read never creates an empty database


# -- cursor paging -------------------------------------------------------------------------


def test_cursor_pages_and_all(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        code, out, err = run(capsys, "query", "--format", "json", "--limit", "3", *cursor)
        assert code == 0
        seen += [json.loads(line)["event_id"] for line in out.splitlines()]
        if not err:
            break
        assert err.startswith("next: --cursor ")
        cursor = err.split()[1:3]
    assert len(seen) == len(set(seen)) == 10
    assert set(seen) == ALL_EVENTS
    assert query_events(capsys, "--all", "--limit", "3") == seen
    code, out, err = run(capsys, "query", "--all", "--limit", "4", "--format", "csv")
    assert code == 0 and err == "" and len(out.splitlines()) == 11


def test_a_cursor_continues_only_the_query_that_made_it(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page of one filter's rows ends where another filter's next page would not begin: the
    cursor would skip or repeat rows there, so it is refused naming the cause."""
    code, _, err = run(capsys, "query", "--limit", "2", "--decision", "allow")
    assert code == 0 and err.startswith("next: --cursor ")
    cursor = err.split()[1:3]
    code, _, err = run(capsys, "query", "--limit", "2", *cursor)
    assert code == 2
    assert err == (
        "moderator: --cursor: the cursor belongs to a query with other filters (repeat them)\n"
    )
    code, out, err = run(capsys, "query", "--limit", "5", "--decision", "allow", *cursor)
    assert code == 0 and out  # the same filters with another page size continue


def test_a_long_query_all_says_how_far_it_is_on_stderr(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.cli import progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # as if each page took 5 s
    code, out, err = run(capsys, "query", "--all", "--limit", "4", "--format", "json")
    assert code == 0 and len(out.splitlines()) == 10
    assert [line.rsplit(",", 1)[0] for line in err.splitlines()] == [
        "query: 4 rows written",
        "query: 8 rows written",
        "query: 10 rows written",
    ]


# -- verify --------------------------------------------------------------------------------


def anchor_file(db: Path) -> Path:
    path = db.parent / "anchors.jsonl"
    with AuditStore.open(f"sqlite:///{db}") as store:
        export_anchor(store, [FileAnchorSink(path)])
    return path


def test_verify_intact_exits_0(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anchors = anchor_file(db)
    code, out, err = run(capsys, "verify", "--anchor-file", str(anchors))
    assert code == 0, out + err
    assert "moderation.audit[0]  5         5           ok" in out
    assert "10 rows checked" in out and out.rstrip().endswith("intact")


def test_verify_uses_the_configured_anchor_file(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODERATOR_AUDIT__ANCHOR_FILE", str(anchor_file(db)))
    code, out, _ = run(capsys, "verify")
    assert code == 0 and "anchor: file " in out


def test_verify_finds_an_edited_row_exits_3(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anchors = anchor_file(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_records SET decision = 'allow' WHERE event_id = 'a-1'")
    code, out, _ = run(capsys, "verify", "--anchor-file", str(anchors))
    assert code == 3
    assert "problem: " in out and "edited" in out and "a-1" in out
    assert "TAMPERED" in out and "TAMPERING FOUND" in out


def test_verify_finds_truncation_against_the_anchor(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = anchor_file(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_records WHERE event_id = 'a-5'")  # last of chain 1
        conn.execute("UPDATE chain_heads SET seq = seq - 1 WHERE partition = 1")
    code, _, _ = run(capsys, "verify", "--anchor-file", str(anchors))
    assert code == 3


def test_verify_unreachable_database_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg")
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", "postgresql://127.0.0.1:1/x")
    code, _, err = run(capsys, "verify")
    assert code == 1
    assert err.splitlines()[-1].startswith("moderator: could not verify: ")


def test_verify_without_a_readable_anchor_exits_1(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "verify", "--anchor-file", str(db.parent / "missing.jsonl"))
    assert code == 1 and "missing.jsonl: no such file" in err
    garbage = db.parent / "garbage.jsonl"
    garbage.write_text("not json\n")
    code, _, err = run(capsys, "verify", "--anchor-file", str(garbage))
    assert code == 1 and "no anchor found in file" in err


def test_verify_without_any_anchor_source_warns(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "verify")
    assert code == 0 and "warning: no anchor" in err


def test_table_marks_smoke_test_models(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moderator.audit.models import IncomingRecord
    from tests.audit_fixtures import BASE, TOPIC, record

    tiny = record("s-1", ALPHA, BASE, engine="transformers", model_name="/models/tiny")
    tiny["verdict"]["model"]["smoke_test"] = True
    with AuditStore.open(f"sqlite:///{db}") as store:
        store.insert([IncomingRecord(TOPIC, 3, 99, tiny)])
    code, out, _ = run(capsys, "query", "--event-id", "s-1")
    assert code == 0
    assert "transformers:tiny (smoke test)" in out
    code, out, _ = run(capsys, "query", "--event-id", "a-0")
    assert code == 0 and "(smoke test)" not in out


# -- hostile values ------------------------------------------------------------------------


def forged(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


AT = "2026-11-29T02:03:00+00:00"
F = filters_digest(AuditQuery())  # the unfiltered query's
EARLY = "0001-01-01T00:00+01:00"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--cursor", forged(f'{{"s":"-decided_at","t":"{AT}","i":{2**63}}}')), "--cursor"),
        (("--cursor", forged(f'{{"s":"-decided_at","t":"{AT}","e":1e308,"f":"{F}"}}')), "--cursor"),
        (("--cursor", forged(f'{{"s":"-decided_at","t":"{AT}","i":Infinity}}')), "--cursor"),
        (("--cursor", forged(f'{{"s":"-decided_at","t":"{AT}","e":NaN,"f":"{F}"}}')), "--cursor"),
        (
            ("--cursor", forged(f'{{"s":"-decided_at","t":"{EARLY}","e":"a","f":"{F}"}}')),
            "--cursor",
        ),
        (("--cursor", forged("[" * 3000 + "]" * 3000)), "--cursor"),
        (("--since", "9999-12-31T23:59:59-23:59"), "--since"),
        (("--until", "0001-01-01T00:00:00+00:01"), "--until"),
        (("--since", "0001-01-01"), "--since"),
        (("--object-key", "a\udcff"), "--object-key"),  # undecodable argv bytes
        (("--bucket", "b\x00"), "--bucket"),
        (("--model", "x" * 2000), "--model"),
        (("--limit", "many"), "--limit"),
        (("--limit", "9" * 5000), "--limit"),
    ],
)
def test_hostile_values_exit_2_with_one_line(
    db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], flag: str
) -> None:
    code, out, err = run(capsys, "query", *args)
    assert (code, out) == (2, ""), err
    assert len(err.splitlines()) == 1 and len(err) < 300, err
    assert err.startswith(f"moderator: {flag}: ")


def test_json_and_csv_keep_operator_columns(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "query", "--format", "json", "--event-id", "a-1")
    assert code == 0, err
    doc = json.loads(out)
    assert {"id", "seq", "offset", "partition", "topic", "row_hash"} <= set(doc)
    assert {"partition", "offset"} <= set(doc["record"]["input"])


def test_stdout_holds_only_rows_in_a_real_process(db: Path, tmp_path: Path) -> None:
    """No log line reaches stdout when nothing configured logging (as in a shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    env["MODERATOR_AUDIT__URL"] = f"sqlite:///{db}"
    command = [sys.executable, "-m", "moderator.cli.main", "audit", "query", "--format", "json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert {json.loads(line)["event_id"] for line in done.stdout.splitlines()} == ALL_EVENTS


def test_table_scores_are_shown_as_recorded(db: Path) -> None:
    """A score rounded to 0.714 next to `block 0.7` reads as another number than explain's."""
    from dataclasses import replace

    from moderator.cli.audit_query import TABLE_COLUMNS, table_cells

    with AuditStore.open(f"sqlite:///{db}") as store:
        row = store.get("a-0")
    assert row is not None
    score = TABLE_COLUMNS.index("score")
    assert table_cells(replace(row, score=0.7136))[score] == "0.7136"
    assert table_cells(replace(row, score=0.5))[score] == "0.5"
    assert table_cells(replace(row, score=None))[score] == "-"
