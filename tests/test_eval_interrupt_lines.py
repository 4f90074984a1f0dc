"""What each offline command says when Ctrl-C stops it: what was kept, and the command that
continues where there is one (`eval`: nothing kept; `dataset rationales`: the journal, rerun to
continue, with a last status line that counts what was done; `scan`: the verdicts written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.cli import dataset_rationales
from moderator.cli import eval as eval_cli
from moderator.cli.main import main
from moderator.pipeline.scan import Scan
from moderator.policy.bundled import write_default_policy
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_eval import make_dataset


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def ctrl_c(*_: Any, **__: Any) -> Any:
    raise KeyboardInterrupt


def test_eval_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data", 2)
    monkeypatch.setattr(eval_cli, "_from_engine", ctrl_c)
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", "r"]
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        "moderator: eval: interrupted: nothing is kept (no report written in r); run the "
        "command again to evaluate from the start\n"
    )


def test_rationales_say_what_the_journal_kept_and_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data", 4)
    argv = ["dataset", "rationales", str(dataset), "out.json", "--engine", "fake"]
    assert main([*argv, "--limit", "2"]) == 0  # two outcomes journalled
    capsys.readouterr()
    monkeypatch.setattr(dataset_rationales, "_ask", ctrl_c)
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        "moderator: rationales: interrupted: 2 sample outcome(s) kept in "
        "out.json.progress.jsonl; run the same command again to continue (it skips them, then "
        "writes out.json)\n"
    )


def test_scan_says_which_verdicts_were_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "a.png")
    write_default_policy(tmp_path / "policies")
    monkeypatch.setattr(Scan, "run", ctrl_c)
    argv = ["scan", str(folder), "--engine", "fake", "--output", "v.jsonl"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert (
        "scan: interrupted: the 0 verdict(s) written to v.jsonl are kept; a scan does not "
        "resume: run it again to judge every object"
    ) in err
