"""A CSV manifest whose quote is never closed is a bad row naming the line where the quoted
field starts, not one sample whose rationale swallows every row after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.policy.bundled import write_default_policy
from moderator.training.manifest import read_manifest
from tests.policy_fixtures import clear_moderator_env

UNCLOSED = (
    "image,rating,category,rationale\n"
    "a.png,Safe,NA,fine\n"  # line 2
    'b.png,Safe,NA,"a quote never closed\n'  # line 3
    "c.png,Unsafe,O2,blood\n"
    "d.png,Safe,NA,grass\n"
)


def test_an_unclosed_quote_is_a_bad_row_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(UNCLOSED, encoding="utf-8")
    read = read_manifest(path)
    assert [r.line for r in read.rows] == [2]
    assert [b.message(path) for b in read.bad] == [
        f"{path}:3: row: not valid CSV: a quoted field that starts on this line is never closed "
        "(the rows after it cannot be read)"
    ]


def test_a_stray_quote_inside_a_field_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('image,rating,category\n"a.png"x,Safe,NA\nb.png,Safe,NA\n', encoding="utf-8")
    read = read_manifest(path)
    assert [(b.line, b.field) for b in read.bad] == [(2, "row")]
    assert "not valid CSV" in read.bad[0].reason


def test_dataset_build_stops_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.csv"
    path.write_text(UNCLOSED, encoding="utf-8")
    write_default_policy(tmp_path / "policies")
    assert main(["dataset", "build", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: row: not valid CSV: a quoted field" in err
    assert not (tmp_path / "out").exists()
