"""The engine factory's `--model` check: an engine that reads no model never ignores one
silently (every command with `--model`); the engines that read engine.model are left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.engine.factory import MODEL_KINDS, check_model_flag
from moderator.errors import ConfigError
from tests.policy_fixtures import clear_moderator_env

REFUSED = (
    "engine.kind={kind} takes no model, so engine.model would be ignored (transformers and "
    "lmdeploy read a checkpoint directory, openai a served model name): leave --model out"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)


@pytest.mark.parametrize("kind", ["fake", "nudenet"])
def test_a_model_for_an_engine_without_one_is_refused(kind: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_model_flag(kind, "/tmp/nomodel")
    assert str(caught.value) == "--model /tmp/nomodel: " + REFUSED.format(kind=kind)
    check_model_flag(kind, None)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_the_engines_that_read_a_model_take_one(kind: str) -> None:
    check_model_flag(kind, "x")


def test_eval_refuses_a_model_for_the_fake_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "test.json"
    dataset.write_text("[]\n", encoding="utf-8")
    argv = ["eval", "--dataset", str(dataset), "--report", str(tmp_path / "r")]
    assert main([*argv, "--engine", "fake", "--model", "x"]) == 2
    assert capsys.readouterr().err == "moderator: --model x: " + REFUSED.format(kind="fake") + "\n"
    assert not (tmp_path / "r").exists()


def test_run_check_fails_its_config_row_on_a_model_for_nudenet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--check", "--engine", "nudenet", "--model", "/tmp/nomodel"]) == 2
    out = capsys.readouterr().out.splitlines()
    config = out[1].split(maxsplit=2)
    assert config[:2] == ["config", "FAIL"]
    assert config[2] == "--model /tmp/nomodel: " + REFUSED.format(kind="nudenet")
    assert all(line.split()[1] == "skipped" for line in out[2:])


def test_a_model_from_the_environment_is_not_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU image sets MODERATOR_ENGINE__MODEL=/models whichever engine runs."""
    from moderator.cli import check

    monkeypatch.setenv("MODERATOR_ENGINE__MODEL", "/models")
    monkeypatch.setattr(check, "CHECKS", {})  # the config row only: no broker, no bucket
    results = check.run_checks(None, {"engine.kind": "fake", "engine.model": None})
    assert [(r.check, r.status) for r in results] == [("config", "ok")]


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--engine", "fake", "--model", "x"],
        ["scan", "PLACEHOLDER", "--engine", "nudenet", "--model", "x"],
        ["replay", "--engine", "fake", "--model", "x", "--dry-run"],
        ["run", "--engine", "fake", "--model", "x"],
    ],
)
def test_every_command_with_the_flag_refuses_a_model_the_engine_ignores(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before any server, broker or engine is started: the line and exit 2 come at once."""
    monkeypatch.setenv("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    argv = [str(tmp_path) if a == "PLACEHOLDER" else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "--model x: engine.kind=" in err, err


def test_run_check_describes_the_fake_engine_as_what_it_is() -> None:
    from moderator.cli.check import check_engine
    from moderator.settings import load_settings

    line = check_engine(load_settings(None, {"engine.kind": "fake"}))
    assert line == "fake (a stand-in for tests: its verdicts are drawn, not judged) loaded"


@pytest.mark.parametrize(
    ("smoke_test", "says"),
    [
        (True, " (the server marks it a smoke-test model: its verdicts are not meaningful)"),
        (False, ""),
    ],
)
def test_run_check_says_a_model_server_answers_not_that_a_checkpoint_loaded(
    smoke_test: bool, says: str
) -> None:
    from moderator.cli.check import check_engine
    from moderator.dev.openai.server import OpenAITestServer, ScriptedBackend
    from moderator.settings import load_settings

    backend = ScriptedBackend('{"rating": "Safe", "category": "NA: None applying"}')
    with OpenAITestServer(backend, model="guard", smoke_test=smoke_test) as server:
        settings = load_settings(
            None, {"engine.kind": "openai", "engine.base_url": server.url, "engine.model": "guard"}
        )
        line = check_engine(settings)
    assert line == f"openai guard{says} answers"
