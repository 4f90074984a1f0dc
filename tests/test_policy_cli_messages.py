"""`moderator policy` messages for a directory that is not there, a file outside one, and a
file with nothing in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.policy.load import EMPTY_FILE
from tests.policy_fixtures import clear_moderator_env, default_yaml
from tests.test_policy_cli import run

HINT = "; pass --policies DIR or set policies.dir"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)


def test_validate_refuses_an_empty_tenant_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "default.yaml").write_text(default_yaml())
    (tmp_path / "x.yaml").write_text("")
    code, out, err = run(capsys, "validate", tmp_path)
    assert (code, out, err) == (2, "", f"{tmp_path / 'x.yaml'}: {EMPTY_FILE}\n")
    code, out, err = run(capsys, "validate", tmp_path / "x.yaml")
    assert (code, out, err) == (2, "", f"{tmp_path / 'x.yaml'}: {EMPTY_FILE}\n")
    (tmp_path / "x.yaml").write_text("{}\n")
    code, out, _ = run(capsys, "validate", tmp_path)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["default", "x"]


def test_validate_refuses_an_empty_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "default.yaml").write_text("# to be written\n")
    (tmp_path / "x.yaml").write_text("on_error: block\n")
    code, out, err = run(capsys, "validate", tmp_path)
    assert (code, out, err) == (2, "", f"{tmp_path / 'default.yaml'}: {EMPTY_FILE}\n")


def test_a_file_outside_a_policy_directory_is_named_without_a_placeholder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    news = tmp_path / "news.yaml"
    news.write_text("on_error: block\n")
    code, out, err = run(capsys, "validate", news)
    assert (code, out) == (2, "")
    assert err == (
        f"moderator: {news}: its directory has no default.yaml to check it against; add "
        "--policies DIR to check it against the policy directory it is meant for\n"
    )


def test_render_without_a_policy_directory_says_how_to_name_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./policies here
    code, out, err = run(capsys, "render", "news")
    assert (code, out, err) == (
        2,
        "",
        f"moderator: policies.dir: policies is not a directory{HINT}\n",
    )
    code, out, err = run(capsys, "validate")
    assert (code, out, err) == (
        2,
        "",
        f"moderator: policies.dir: policies is not a directory{HINT}\n",
    )


def test_a_named_directory_that_is_missing_gets_no_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    code, _, err = run(capsys, "render", "news", "--policies", missing)
    assert (code, err) == (2, f"moderator: policies.dir: {missing} is not a directory\n")
