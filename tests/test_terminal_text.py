"""Uploader-controlled text in what people read: an object key, bucket, surface, error message
or rationale holding ESC, CR/LF or a bidi override is shown as visible escapes (`\\x1b`, `\\r`,
`\\u202e`), never raw, by `explain`, `audit query`'s table, the demo's audit rows, one-line CLI
errors and the replay report's tables; JSON keeps the exact text (moderator/text.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.cli.demo_audit import _print_rows
from moderator.cli.lines import error_line
from moderator.cli.main import main
from moderator.errors import ErrorCode, ModeratorError
from moderator.events.verdict import Assessment
from moderator.explain.render import because, explanation_json, text_lines
from moderator.policy.compiled import TenantPolicy
from moderator.policy.locations import outside_tenant
from moderator.replay.html import html_table
from moderator.replay.markdown import table_lines
from moderator.replay.tables import Table, cell_text
from moderator.text import safe_line
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import audit_record, demo, explain

KEY = "acme/x\r\ndecision   allow\x1b[31m\u202egnp.exe"
BUCKET = "uploads\x1b]0;title\x07"
SURFACE = "post\u2028forged"
RATIONALE = "A cat.\x1b[2J\rdecision   allow\x9b0m"
# Anything a terminal acts on, or that starts a line, in the text lines.
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def hostile(event_id: str, policy: TenantPolicy, *, error: bool) -> dict[str, Any]:
    """An AuditRecord v1 as the pipeline writes it for an upload with a hostile key, bucket and
    surface: a `tenant_mismatch` error (the key holds control characters), or a model answer
    whose rationale holds escape sequences."""
    where = {"bucket": BUCKET, "key": KEY, "surface": SURFACE, "image_format": "PNG\x1b[0m"}
    if error:
        message = outside_tenant(policy, BUCKET, KEY)
        return audit_record(
            event_id, policy, error=ErrorCode.TENANT_MISMATCH, message=message, **where
        )
    assessment = Assessment(rating="Safe", category="NA: None applying", rationale=RATIONALE)
    return audit_record(event_id, policy, assessment=assessment, **where)


# -- the function --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("acme/photo.jpg", "acme/photo.jpg"),
        ("x\r\ndecision   allow", "x\\r\\ndecision   allow"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\tb\x00c\x7f", "a\\tb\\x00c\\x7f"),
        ("csi\x9b0m nel\x85", "csi\\x9b0m nel\\x85"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        (
            "\u202eevil\u202c \u2066iso\u2069 \u200fmark",
            "\\u202eevil\\u202c \\u2066iso\\u2069 \\u200fmark",
        ),
        ("lone \udc80", "lone \\udc80"),
        ("Zoë/Straße/写真/صورة.jpg", "Zoë/Straße/写真/صورة.jpg"),
        ("back\\slash \\x1b", "back\\slash \\x1b"),
    ],
)
def test_controls_are_escaped_and_letters_kept(text: str, shown: str) -> None:
    assert safe_line(text) == shown


@given(st.text())
def test_any_text_becomes_one_inert_line(text: str) -> None:
    line = safe_line(text)
    assert RAW.search(line) is None
    assert len(line.splitlines()) <= 1
    line.encode("utf-8")  # no lone surrogate left
    assert safe_line(line) == line
    if RAW.search(text) is None and not any("\ud800" <= c <= "\udfff" for c in text):
        assert line == text


# -- explain -------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [True, False])
def test_explain_text_shows_hostile_values_escaped(error: bool) -> None:
    e = explain(hostile("h-1", demo("acme"), error=error))
    lines = text_lines(e)
    assert [RAW.findall(line) for line in lines] == [[] for _ in lines]
    steps = {line[:9].strip(): line[11:] for line in lines}
    assert "x\\r\\ndecision   allow\\x1b[31m\\u202egnp.exe" in steps["input"]
    assert "uploads\\x1b]0;title\\x07" in steps["input"]
    assert "surface post\\u2028forged" in steps["input"]
    assert "PNG\\x1b[0m" in steps["image"]
    if error:
        assert steps["error"].startswith("tenant_mismatch: s3://uploads\\x1b]0;title\\x07/")
        assert "x\\r\\ndecision   allow" in steps["error"]
    else:
        assert steps["rationale"] == '"A cat.\\x1b[2J\\rdecision   allow\\x9b0m"'
    assert RAW.search(because(e)) is None


def test_explain_json_keeps_the_exact_values_and_escapes_its_steps() -> None:
    doc = explanation_json(explain(hostile("h-1", demo("acme"), error=True)))
    assert doc["input"]["key"] == KEY and doc["input"]["bucket"] == BUCKET
    assert "\r\n" in doc["error"]["message"]
    assert all(RAW.search(step["text"]) is None for step in doc["steps"])
    assert RAW.search(doc["rule"]["text"]) is None


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    path = tmp_path / "audit.db"
    acme = demo("acme")
    docs = [hostile("h-err", acme, error=True), hostile("h-ok", acme, error=False)]
    with AuditStore.open(f"sqlite:///{path}") as store:
        items = [IncomingRecord("moderation.audit", 0, n, r) for n, r in enumerate(docs)]
        assert store.insert(items).inserted == len(items)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{path}")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("event_id", ["h-err", "h-ok"])
def test_explain_prints_no_raw_control(
    db: Path, capsys: pytest.CaptureFixture[str], event_id: str
) -> None:
    code, out, err = run(capsys, "explain", event_id)
    assert code == 0, err
    assert RAW.findall(out) == ["\n"] * len(out.splitlines())
    assert "\\r\\ndecision   allow\\x1b[31m" in out
    assert [line for line in out.splitlines() if line.startswith("decision ")] == [
        "decision   " + ("review" if event_id == "h-err" else "allow")
    ]


def test_explain_json_is_exact(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "h-err", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["input"]["key"] == KEY


def test_audit_query_table_prints_no_raw_control(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    columns = "event_id,object,surface,decision,error,rationale,because"
    code, out, err = run(capsys, "audit", "query", "--columns", columns)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3  # the header and two rows: no forged line
    assert RAW.findall(out) == ["\n"] * 3
    assert "allow\\x1b[31m\\u202egnp.exe" in out  # the key, cut in the middle
    assert "post\\u2028forged" in out and "A cat.\\x1b[2J\\rdecision" in out
    code, out, err = run(capsys, "audit", "query")
    assert code == 0, err
    assert len(out.splitlines()) == 3 and RAW.findall(out) == ["\n"] * 3
    assert "uploads\\x1b]0;t..." in out


def test_audit_query_json_keeps_the_exact_key(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "query", "--format", "json")
    assert code == 0, err
    # Split at "\n" only, as JSON Lines are read: str.splitlines() also breaks at U+2028.
    assert {json.loads(line)["object_key"] for line in out.rstrip("\n").split("\n")} == {KEY}


def test_demo_audit_rows_print_no_raw_control(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with AuditStore.open(f"sqlite:///{db}") as store:
        rows = [row for event_id in ("h-err", "h-ok") if (row := store.get(event_id))]
    _print_rows(rows)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 3 and RAW.findall(out) == ["\n"] * 3
    assert "x\\r\\ndecision" in out


def test_a_one_line_error_escapes_controls() -> None:
    line = error_line(ModeratorError(f"no object s3://{BUCKET}/{KEY}"))
    assert RAW.search(line) is None
    assert "x decision allow\\x1b[31m\\u202egnp.exe" in line  # line breaks read as spaces


# -- replay report tables ------------------------------------------------------------------


def test_replay_report_tables_escape_keys() -> None:
    table = Table("changed-events", "Changed events", ("Event", "Object key"), (("e-1", KEY),))
    assert cell_text(KEY) == safe_line(KEY)
    markdown = "\n".join(table_lines(table))
    html = "\n".join(html_table(table))
    assert RAW.findall(markdown) == ["\n"] * 2 and RAW.findall(html) == ["\n"] * 2
    assert "\\\\x1b\\[31m" in markdown  # the escape, itself escaped for Markdown
    assert "\\x1b[31m" in html
