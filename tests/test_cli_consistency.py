"""One CLI style: the flags several commands share have one name, metavar and help; positional
directories are named in errors; and nothing expensive starts (embedded broker, bucket
listing, Kafka lookups, model load) before every argument has been checked."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NoReturn

import pytest

from moderator.cli.main import build_parser, main
from moderator.cli.style import (
    CONFIG_HELP,
    ENGINE_HELP,
    ENGINES,
    MODEL_HELP,
    OUTPUT_HELP,
    POLICIES_HELP,
    TENANT_METAVAR,
)
from moderator.policy.bundled import write_default_policy
from tests.policy_fixtures import clear_moderator_env
from tests.test_cli_help import walk

# flag -> (metavar, help); None: the help may say what the flag means for that command.
SHARED = {
    "--config": ("FILE", CONFIG_HELP),
    "--policies": ("DIR", POLICIES_HELP),
    "--engine": ("E", ENGINE_HELP),
    "--model": ("M", MODEL_HELP),
    "--output": ("FILE", OUTPUT_HELP),
    "--tenant": (TENANT_METAVAR, None),
}
# `audit query --model ENGINE[:NAME]` filters rows by the recorded model; it sets nothing.
# `dataset from-audit` and `audit export-dsa` take the same filters, with the same metavar.
# `train --config FILE` is the run configuration, not the settings file; `train --resume
# [CHECKPOINT]` names a checkpoint directory, not a replay run id.
FILTERS = {
    ("audit", "query", "--model"),
    ("audit", "export-dsa", "--model"),
    ("dataset", "from-audit", "--model"),
    ("train", "--config"),
    ("train", "--resume"),
}


def _flags() -> dict[str, list[tuple[tuple[str, ...], argparse.Action]]]:
    found: dict[str, list[tuple[tuple[str, ...], argparse.Action]]] = defaultdict(list)
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if (*path, option) not in FILTERS:
                    found[option].append((path, action))
    return found


FLAGS = _flags()


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_flags_have_one_metavar_and_help(flag: str) -> None:
    metavar, help_text = SHARED[flag]
    uses = FLAGS[flag]
    assert len(uses) >= 2, flag
    for path, action in uses:
        assert action.metavar == metavar, (path, flag)
        if help_text is not None:
            assert action.help == help_text, (path, flag)


def test_the_engine_help_names_every_engine_and_the_setting() -> None:
    assert "engine.kind" in ENGINE_HELP and "docs/engines.md" in ENGINE_HELP
    assert all(f"{kind} (" in ENGINE_HELP for kind in ENGINES)
    assert "engine.model" in MODEL_HELP
    for path, action in FLAGS["--engine"]:
        assert tuple(action.choices or ()) == ENGINES, path


def test_the_commands_that_set_the_engine() -> None:
    engine = {path for path, _ in FLAGS["--engine"]}
    model = {path for path, _ in FLAGS["--model"]}
    assert {("run",), ("demo",), ("scan",), ("replay",)} <= model <= engine


def test_every_choice_flag_shows_its_choices_one_way() -> None:
    """`--format a|b`-style metavars; `--engine E` lists them in its help instead."""
    for option, uses in FLAGS.items():
        for path, action in uses:
            if option == "--engine" or not action.option_strings:
                continue
            if action.choices:
                assert action.metavar == "|".join(action.choices), (path, option)
    for path, action in FLAGS["--format"]:
        assert re.fullmatch(r"[a-z]+(\|[a-z]+)+", str(action.metavar)), path
        assert f"(default: {action.default})" in str(action.help), path


def test_every_flag_name_has_one_metavar_everywhere() -> None:
    """`--format` excepted: its metavar lists each command's own choices."""
    for option, uses in FLAGS.items():
        if option != "--format":
            assert len({action.metavar for _, action in uses}) == 1, (option, uses)


# -- positional directories --------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    directory = tmp_path / "policies"
    directory.mkdir()
    write_default_policy(directory)
    return directory


def test_policy_diff_names_the_missing_argument(policies: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    code, out, err = _run(["policy", "diff", str(policies), str(missing)])
    assert (code, out, err) == (2, "", f"moderator: NEW_DIR: {missing} is not a directory\n")
    code, _, err = _run(["policy", "diff", str(missing), str(policies)])
    assert (code, err) == (2, f"moderator: OLD_DIR: {missing} is not a directory\n")
    code, _, err = _run(["policy", "validate", str(missing)])
    assert (code, err) == (2, f"moderator: DIR: {missing} is not a directory\n")


def test_policy_validate_takes_the_directory_either_way(policies: Path, tmp_path: Path) -> None:
    positional = _run(["policy", "validate", str(policies)])
    flag = _run(["policy", "validate", "--policies", str(policies)])
    both = _run(["policy", "validate", str(policies), "--policies", f"{policies}/"])
    assert positional == flag == both
    assert positional[0] == 0 and positional[1].startswith("default")
    code, out, err = _run(["policy", "validate", str(policies), "--policies", str(tmp_path)])
    assert (code, out) == (2, "") and err.count("\n") == 1 and "give the directory once" in err


# -- nothing expensive before the arguments are checked ----------------------------------------


def _forbidden(what: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{what} started before the arguments were checked")

    return fail


def _one_line(err: str, expected: str) -> None:
    lines = err.splitlines()
    assert lines == [f"moderator: {expected}"], err


NO_CHECKPOINT = "engine.model: no checkpoint directory at {} (weights are never downloaded: put "


def test_demo_checks_the_model_before_starting_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setattr("moderator.cli.demo.EmbeddedStack", _forbidden("the embedded stack"))
    missing = tmp_path / "nope"
    started = time.monotonic()
    code, out, err = _run(["demo", "--engine", "transformers", "--model", str(missing)])
    assert time.monotonic() - started < 10
    assert (code, out) == (2, "")
    assert "starting the embedded" not in err
    _one_line(err, NO_CHECKPOINT.format(missing) + "the checkpoint there)")


def test_demo_checks_the_policies_and_events_before_starting_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setattr("moderator.cli.demo.EmbeddedStack", _forbidden("the embedded stack"))
    code, _, err = _run(["demo", "--engine", "fake", "--policies", str(tmp_path / "none")])
    assert code == 2 and "starting the embedded" not in err
    _one_line(err, f"policies.dir: {tmp_path / 'none'} is not a directory")
    code, _, err = _run(["demo", "--engine", "fake", "--events", "0"])
    assert code == 2
    _one_line(err, "--events: must be at least 1, got 0")


def test_demo_checks_its_port_before_starting_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port in use (another `moderator run`, say) is found before the stack starts, and
    --http-port, which the message offers, is a demo flag."""
    import socket

    clear_moderator_env(monkeypatch)
    monkeypatch.setattr("moderator.cli.demo.EmbeddedStack", _forbidden("the embedded stack"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MODERATOR_HTTP__HOST", "127.0.0.1")
        code, _, err = _run(["demo", "--engine", "fake", "--http-port", str(port)])
    assert code == 2 and "starting the embedded" not in err
    assert err.count("\n") == 1, err
    assert err.startswith(f"moderator: http.port: cannot listen on 127.0.0.1:{port}: the port is")
    assert "--http-port" in err


def test_scan_checks_the_model_and_output_before_listing_or_loading(
    policies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moderator.cli.scan.open_source", _forbidden("the listing"))
    monkeypatch.setattr("moderator.cli.scan.build_pipeline", _forbidden("the engine"))
    missing = tmp_path / "nope"
    base = ["scan", "s3://uploads/acme/", "--policies", str(policies)]
    code, out, err = _run([*base, "--engine", "transformers", "--model", str(missing)])
    assert (code, out) == (2, "")
    _one_line(err, NO_CHECKPOINT.format(missing) + "the checkpoint there)")
    output = tmp_path / "no-such-folder" / "v.csv"
    code, _, err = _run([*base, "--engine", "fake", "--output", str(output)])
    assert code == 2
    _one_line(err, f"scan: cannot write {output}: no directory {output.parent}")


def test_replay_checks_the_model_before_contacting_kafka(
    policies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moderator.ingest.kafka.make_consumer", _forbidden("a Kafka consumer"))
    missing = tmp_path / "nope"
    argv = ["replay", "--policies", str(policies), "--engine", "transformers"]
    code, out, err = _run([*argv, "--model", str(missing), "--report", str(tmp_path / "r")])
    assert (code, out) == (2, "")
    _one_line(err, NO_CHECKPOINT.format(missing) + "the checkpoint there)")
    assert not (tmp_path / "r").exists()


def test_run_checks_the_model_before_contacting_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setattr("moderator.ingest.startup.probe_cluster", _forbidden("the broker probe"))
    missing = tmp_path / "nope"
    code, out, err = _run(["run", "--engine", "transformers", "--model", str(missing)])
    assert (code, out) == (2, "")
    _one_line(err, NO_CHECKPOINT.format(missing) + "the checkpoint there)")
