"""`moderator scan --format jsonl|csv` and the summary by decision and error code on stderr."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from moderator.cli.main import main
from moderator.pipeline.progress import Progress, Tally, summary_lines
from moderator.pipeline.scan import Scan
from moderator.pipeline.scan_output import CSV_COLUMNS, FORMATS, VerdictLines, csv_row
from moderator.policy.bundled import write_default_policy
from tests.policy_fixtures import clear_moderator_env

FAKE = ["--engine", "fake"]
ODD_NAME = 'comma, "quoted" name.png'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for name, color in (("a.png", (200, 10, 10)), (ODD_NAME, (10, 200, 10))):
        Image.new("RGB", (32, 24), color).save(root / name, "PNG")
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    directory = tmp_path / "policies"
    directory.mkdir()
    write_default_policy(directory)
    return directory


def _scan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["scan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_has_the_documented_columns_and_matches_the_json_lines(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [str(folder), *FAKE, "--policies", str(policies)]
    code, out, _ = _scan(capsys, *base)
    assert code == 0
    verdicts = {v["event_id"]: v for v in map(json.loads, out.splitlines())}
    code, out, _ = _scan(capsys, *base, "--format", "csv")
    assert code == 0
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == len(verdicts) == 4
    for row in rows:
        cells = dict(zip(header, row, strict=True))
        verdict = verdicts[cells["event_id"]]
        assert cells["object_key"] == verdict["object"]["key"]
        assert cells["object_bucket"] == "" and cells["tenant_id"] == "default"
        assert cells["decision"] == verdict["decision"]
        assert cells["source"] == verdict["source"]
        assert cells["policy_version"] == verdict["policy"]["version"]
        model = verdict["model"] or {}
        assert cells["model_smoke_test"] == ("true" if model.get("smoke_test") else "")
        assessment, error = verdict["assessment"], verdict["error"]
        if error is not None:
            assert cells["error_code"] == error["code"]
            assert cells["rating"] == cells["category"] == cells["score"] == ""
        else:
            assert cells["error_code"] == ""
            assert cells["category"] == assessment["category"]
            assert cells["rating"] == assessment["rating"]
            assert cells["score"] == (
                "" if assessment["score"] is None else str(assessment["score"])
            )
    keys = {dict(zip(header, row, strict=True))["object_key"] for row in rows}
    assert str(folder / ODD_NAME) in keys  # commas and quotes survive the round trip


def test_the_summary_counts_decisions_and_error_codes_also_with_output(
    folder: Path, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "v.csv"
    argv = [str(folder), *FAKE, "--policies", str(policies), "--format", "csv"]
    code, out, err = _scan(capsys, *argv, "--output", str(out_file))
    assert (code, out) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    decisions = {d: sum(r["decision"] == d for r in rows) for d in ("allow", "review", "block")}
    errors: dict[str, int] = {}
    for r in rows:
        if r["error_code"]:
            errors[r["error_code"]] = errors.get(r["error_code"], 0) + 1
    assert sum(errors.values()) == 2  # the text file and the empty "image"
    expected = summary_lines(Tally(decisions, errors))
    lines = err.splitlines()
    at = lines.index(expected[0])
    assert lines[at : at + len(expected)] == expected
    assert lines[at + len(expected)].startswith("scan: done 4/4, errors 2, ")
    assert "  total" in err and f"{len(rows)}" in next(x for x in expected if "total" in x)


def test_summary_lines_layout() -> None:
    tally = Tally({"allow": 12, "review": 3}, {"corrupt_image": 1, "fetch_not_found": 2})
    assert summary_lines(tally) == [
        "  decision         verdicts",
        "  allow                  12",
        "  review                  3",
        "  block                   0",
        "  total                  15",
        "  error code       verdicts",
        "  fetch_not_found         2",
        "  corrupt_image           1",
    ]
    assert summary_lines(Tally({}, {}))[-2:] == ["  error code  verdicts", "  (none)             0"]


def test_a_bad_format_is_a_usage_error(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["scan", str(folder), "--format", "xml"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format" in err and "'xml'" in err


def test_csv_header_comes_first_even_without_objects() -> None:
    out = io.StringIO()
    scan = Scan(
        None,  # type: ignore[arg-type]  # no item: the processor is never called
        out,
        tenant_id="default",
        local=True,
        verdicts_topic="v",
        max_in_flight=2,
        output_format="csv",
    )
    progress_stream = io.StringIO()
    scan.run(iter(()), Progress(progress_stream))
    assert out.getvalue() == ",".join(CSV_COLUMNS) + "\n"
    assert "  total" in progress_stream.getvalue()


def test_verdict_lines_formats() -> None:
    doc = {
        "event_id": "scan-1",
        "tenant_id": "acme",
        "object": {"bucket": "b", "key": "k=1,2"},
        "decision": "block",
        "assessment": {"rating": "Unsafe", "category": "O4: Nudity Content", "score": 0.91},
        "error": None,
        "source": "model",
        "model": {"engine": "fake", "name": "fake", "smoke_test": True},
    }
    assert FORMATS == ("jsonl", "csv")
    assert json.loads(VerdictLines("jsonl").line(doc)) == doc
    assert VerdictLines("jsonl").header() == ""
    row = dict(zip(CSV_COLUMNS, csv_row(doc), strict=True))
    assert row["object_key"] == "k=1,2" and row["category"] == "O4: Nudity Content"
    assert row["score"] == "0.91" and row["model_smoke_test"] == "true" and row["sha256"] == ""
    assert VerdictLines("csv").line(doc).startswith('b,"k=1,2",scan-1,acme,block,Unsafe,')
    with pytest.raises(ValueError, match="unknown scan output format"):
        VerdictLines("xml")
