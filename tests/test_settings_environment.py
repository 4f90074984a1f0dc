"""MODERATOR_* variables whose first part names no setting: the settings loader ignores them, so
every command warns about each one (with the closest setting), and goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import build_parser, environment_warnings, main
from moderator.policy.bundled import write_default_policy
from moderator.settings import Settings
from moderator.settings_errors import unknown_environment
from tests.policy_fixtures import clear_moderator_env


def test_a_mistyped_variable_gets_the_closest_setting() -> None:
    lines = unknown_environment(
        Settings,
        {
            "MODERATOR_KAFAK__BOOTSTRAP_SERVERS": "h:9092",
            "MODERATOR_KAFKA_BOOTSTRAP_SERVERS": "h:9092",
            "moderator_lgo": "x",
            "MODERATOR_ZZZ": "1",
        },
    )
    assert lines == [
        "MODERATOR_KAFAK__BOOTSTRAP_SERVERS is not a setting and is ignored: did you mean "
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS?",
        "MODERATOR_KAFKA_BOOTSTRAP_SERVERS is not a setting and is ignored: nested keys take "
        "'__': did you mean MODERATOR_KAFKA__BOOTSTRAP_SERVERS?",
        "MODERATOR_ZZZ is not a setting and is ignored: the settings have no section or key 'zzz'",
        "moderator_lgo is not a setting and is ignored: did you mean MODERATOR_LOG?",
    ]


def test_settings_maps_and_other_variables_pass() -> None:
    environ = {
        "MODERATOR_HTTP__PORT": "0",
        "MODERATOR_KAFKA__TOPICS__UPLOADS": "u",
        "MODERATOR_KAFKA__BOOTSTRAP_SERVER": "h",  # below a section: the loader refuses it
        "MODERATOR_DSA_PUID_SALT": "salt",
        "MODERATOR_KAFKA_JARS": "/jars",
        "PATH": "/bin",
    }
    assert unknown_environment(Settings, environ) == []


def test_every_command_warns_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    write_default_policy(tmp_path)
    monkeypatch.setenv("MODERATOR_POLICIE__DIR", str(tmp_path))
    assert main(["policy", "validate", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "moderator: warning: MODERATOR_POLICIE__DIR is not a setting and is ignored: "
        "did you mean MODERATOR_POLICIES__DIR?"
    )


def test_a_worker_leaves_the_warning_to_its_supervisor() -> None:
    environ = {"MODERATOR_POLICIE__DIR": "/p"}
    supervisor = build_parser().parse_args(["run", "--workers", "2"])
    worker = build_parser().parse_args(["run", "--worker-index", "1"])
    assert len(environment_warnings(supervisor, environ)) == 1
    assert environment_warnings(worker, environ) == []
