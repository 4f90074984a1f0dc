"""`eval` and `dataset rationales` refuse a policy directory that was given (`--policies` or
MODERATOR_POLICIES__DIR) and does not exist, as `scan`, `train` and `dataset build` do; left at
its default and missing, the bundled default policy prompts the samples without a prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_eval import make_dataset


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def commands(tmp_path: Path) -> list[list[str]]:
    dataset = str(make_dataset(tmp_path / "data", 2))
    return [
        ["eval", "--dataset", dataset, "--engine", "fake", "--report", str(tmp_path / "r")],
        ["dataset", "rationales", dataset, str(tmp_path / "out.json"), "--engine", "fake"],
    ]


def test_a_policies_flag_naming_no_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in commands(tmp_path):
        assert main([*argv, "--policies", "nosuch"]) == 2, argv
        assert capsys.readouterr().err == "moderator: policies.dir: nosuch is not a directory\n"


def test_the_setting_naming_no_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", "nosuch")
    for argv in commands(tmp_path):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == "moderator: policies.dir: nosuch is not a directory\n"


def test_the_default_left_missing_uses_the_bundled_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in commands(tmp_path):
        assert main(argv) == 0, argv
    assert "use the bundled default policy" in capsys.readouterr().err
