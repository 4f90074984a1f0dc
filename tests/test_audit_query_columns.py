"""`moderator audit query`: every column in JSON and CSV, `because` flagging a recorded decision
the policy's rule does not give, the error, source and surface filters, `--model` checked and
matched as documented, and the usage line of a bad `--format`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import get_args

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.audit.read.filters import ENGINES
from moderator.cli.main import main
from moderator.settings import EngineSettings
from tests.audit_fixtures import make_db
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain_cli import records as explained_records


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["audit", "query", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    path = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", make_db(path))
    return path


@pytest.fixture
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Verdicts of the demo policies (kidsplace blocks a corrupt image: on_error block)."""
    clear_moderator_env(monkeypatch)
    path = tmp_path / "demo.db"
    with AuditStore.open(f"sqlite:///{path}") as store:
        items = [
            IncomingRecord("moderation.audit", 0, n, r) for n, r in enumerate(explained_records())
        ]
        assert store.insert(items).inserted == len(items)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{path}")
    return path


def stored(path: Path, event_id: str, column: str) -> object:
    conn = sqlite3.connect(path)
    try:
        query = f'SELECT "{column}" FROM audit_records WHERE event_id = ?'  # noqa: S608
        return conn.execute(query, (event_id,)).fetchone()[0]
    finally:
        conn.close()


# -- every column ------------------------------------------------------------------------------


def test_json_carries_the_hashes_and_the_category_code(db: Path) -> None:
    code, out, err = run("--format", "json", "--event-id", "a-1")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["columns_hash"] == stored(db, "a-1", "columns_hash")
    assert len(doc["columns_hash"]) == 64
    assert doc["category_code"] == "O4"
    assert {"record_hash", "prev_hash", "row_hash"} <= set(doc)
    assert "policy_elided" not in doc  # how the record is kept, not a fact: record has it


def test_csv_carries_and_selects_the_same_columns_as_json(db: Path) -> None:
    code, out, err = run("--format", "json", "--event-id", "a-1")
    json_columns = set(json.loads(out)) - {"record"}
    code, out, err = run("--format", "csv", "--event-id", "a-1")
    assert code == 0, err
    assert set(next(csv.reader(io.StringIO(out)))) == json_columns
    code, out, err = run("--format", "csv", "--columns", "event_id,columns_hash,category_code")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    row = next(r for r in rows if r["event_id"] == "a-1")
    assert row == {
        "event_id": "a-1",
        "columns_hash": stored(db, "a-1", "columns_hash"),
        "category_code": "O4",
    }


# -- because -----------------------------------------------------------------------------------


def test_because_flags_a_decision_the_rule_does_not_give(demo_db: Path) -> None:
    conn = sqlite3.connect(demo_db)
    conn.execute("UPDATE audit_records SET decision = 'allow' WHERE event_id = 'k-2'")
    conn.commit()
    conn.close()
    code, out, err = run("--columns", "event_id,decision,because", "--tenant", "kidsplace")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["k-2"].split(None, 2)[1:] == [
        "allow",
        "error: corrupt_image -> on_error block; MISMATCH: recorded allow",
    ]
    assert "MISMATCH" not in lines["k-1"]


def test_because_adds_nothing_where_the_rule_gives_the_recorded_decision(demo_db: Path) -> None:
    code, out, err = run("--format", "csv", "--columns", "event_id,because")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and all("MISMATCH" not in r["because"] for r in rows)
    assert {r["event_id"]: r["because"] for r in rows}["k-2"] == (
        "error: corrupt_image -> on_error block"
    )


# -- filters -----------------------------------------------------------------------------------


def events(*argv: str) -> set[str]:
    code, out, err = run("--format", "json", *argv)
    assert code == 0, err
    return {json.loads(line)["event_id"] for line in out.splitlines()}


def test_error_source_and_surface_filters(demo_db: Path) -> None:
    assert events("--error", "corrupt_image") == {"k-2"}
    assert events("--error", "engine_timeout") == {"a-err"}
    assert events("--source", "cache") == {"a-2"}
    assert events("--source", "error") == {"k-2", "a-err"}
    assert events("--surface", "post") == {"k-1", "k-2", "a-err", "a-1", "a-2", "a-3"}
    assert events("--surface", "avatar") == set()
    assert events("--error", "corrupt_image", "--tenant", "acme") == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--error", "bogus"), "moderator: --error: must be one of access_denied, corrupt_image, "),
        (("--error", "malformed_event"), "moderator: --error: must be one of "),
        (("--source", "engine"), "moderator: --source: must be one of model, cache, error, got "),
        (("--surface", "a\x00"), "moderator: --surface: contains a NUL character"),
        (("--model", "nudnet"), "moderator: --model: unknown engine 'nudnet' (engines: nudenet, "),
    ],
)
def test_bad_filter_values_exit_2_with_one_line(
    db: Path, args: tuple[str, ...], expected: str
) -> None:
    code, out, err = run(*args)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith(expected), err


def test_a_mistyped_engine_names_the_closest(db: Path) -> None:
    _, _, err = run("--model", "nudnet:320n")
    assert err.rstrip().endswith("; did you mean 'nudenet'?")


def test_the_engine_of_model_is_matched_in_any_case(db: Path) -> None:
    assert events("--model", "FAKE") == events("--model", "fake") != set()
    assert events("--model", "NudeNet:320n") == {"a-3"}


def test_a_model_name_that_matches_nothing_lists_the_stores_models(db: Path) -> None:
    code, out, err = run("--model", "nudenet:320N")
    assert (code, out) == (0, "")
    assert err == (
        "no matching audit rows; --model nudenet:320N is none of the store's models: "
        "fake:org/fake-guard, nudenet:320n\n"
    )
    code, out, err = run("--format", "json", "--model", "nudenet", "--tenant", "beta")
    assert (code, out, err) == (0, "", "no matching audit rows\n")  # a model of the store


def test_the_engines_are_those_of_the_settings() -> None:
    assert get_args(EngineSettings.model_fields["kind"].annotation) == ENGINES


# -- --format ----------------------------------------------------------------------------------


def test_a_bad_format_is_the_parsers_usage_line(db: Path) -> None:
    code, out, err = run("--format", "xml")
    assert (code, out) == (2, "")
    assert err == (
        "moderator audit query: error: argument --format: invalid choice: 'xml' "
        "(choose from 'table', 'json', 'csv') (see moderator audit query --help)\n"
    )
    code, _, err = run("--format", "x" * 5000)
    assert code == 2 and err.count("\n") == 1 and len(err) < 200
