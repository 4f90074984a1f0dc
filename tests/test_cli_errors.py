"""Every failure is one line on stderr, and `--debug` only adds a traceback before it: bad
flags, bad settings from the environment and from the config file (generated from the settings
model), bad audit URLs, librdkafka refusing a configuration. stdout stays for data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from moderator.cli.lines import error_line
from moderator.cli.main import main
from moderator.errors import ConfigError, ModeratorError
from moderator.ingest.kafka import make_producer
from moderator.policy.bundled import write_default_policy
from moderator.settings import ENV_PREFIX, Settings, load_settings
from tests.fuzz import fuzz_settings


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) else None
        if get_origin(annotation) is not None:
            nested = next(
                (
                    a
                    for a in get_args(annotation)
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
        if nested is not None and issubclass(nested, BaseModel):
            yield from _leaves(nested, (*path, name))
        else:
            yield (*path, name)


LEAVES = tuple(_leaves(Settings))
GARBAGE = (
    *("", " ", "-1", "0", "1e309", "nan", "-inf", "true", "yes", "null", "None", "0x10"),
    *("[]", "{}", "{", "[1,", '{"a": 1}', '["a"]', "9" * 40, "é", "http://u:p@h"),
    *("sqlite://", "postgresql://u:secret@h:notaport/db", "\t\n"),
)
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)
_YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Exactly these MODERATOR_* variables (others removed) for the block, and the HTTP
    endpoint off unless they set it (a command that gets far would otherwise bind 9400, which
    another process on the machine may hold)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    values = {f"{ENV_PREFIX}HTTP__PORT": "0", **values}
    with mock.patch.dict(os.environ, {**clean, **values}, clear=True):
        yield


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr); argparse exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_one_line_failure(argv: list[str], code: int = 2) -> str:
    """`argv` fails with `code` and one stderr line, and so does `--debug argv` (traceback
    first, the same line last). The line."""
    got, out, err = run_main(argv)
    assert (got, out) == (code, ""), err
    assert err.count("\n") == 1 and err.startswith("moderator"), err
    assert "Traceback" not in err
    debug_code, debug_out, debug_err = run_main(["--debug", *argv])
    assert (debug_code, debug_out) == (code, "")
    assert debug_err.splitlines()[-1] == err.rstrip("\n")
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policies")
    write_default_policy(directory)
    return directory


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--nope"],
        [],
        ["run", "--bogus"],
        ["run", "--engine", "gpt"],
        ["demo", "--events", "many"],
        ["policy"],
        ["policy", "render"],
        ["policy", "render", "t", "--format", "xml"],
        ["scan"],
        ["audit", "bogus"],
        ["model", "make-tiny"],
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv: list[str]) -> None:
    line = assert_one_line_failure(argv)
    assert "error:" in line and "--help" in line


@pytest.mark.parametrize(
    ("argv", "command", "leftover"),
    [
        (["scan", "photos", "--bogus"], "scan", "--bogus"),
        (["policy", "validate", "--foo"], "policy validate", "--foo"),
        (["audit", "query", "--bogus"], "audit query", "--bogus"),
        (["run", "--check", "extra-arg"], "run", "extra-arg"),
        (["dev-stack", "upload", "--tenant", "kids", "--bogus"], "dev-stack upload", "--bogus"),
        (["audit", "--bogus", "query"], "audit", "--bogus"),
        (["--bogus", "scan", "photos"], "", "--bogus"),
    ],
)
def test_an_unknown_argument_names_the_command_it_was_given_to(
    argv: list[str], command: str, leftover: str
) -> None:
    prog = f"moderator {command}".strip()
    assert assert_one_line_failure(argv) == (
        f"{prog}: error: unrecognized arguments: {leftover} (see {prog} --help)"
    )


# -- settings ----------------------------------------------------------------------------------


def test_every_settings_field_is_covered() -> None:
    assert ("kafka", "sasl_mechanism") in LEAVES and ("engine", "openai", "api_key") in LEAVES
    assert ("kafka", "topics", "uploads") in LEAVES and ("audit", "api_tokens") in LEAVES
    assert len(LEAVES) > 80


@pytest.mark.fuzz
@fuzz_settings(100)
@given(data=st.data())
def test_garbage_settings_fail_with_one_line(policy_dir: Path, data: st.DataObject) -> None:
    """Any value in any settings field, from the environment or the config file: `policy
    validate` (which loads every setting, then exits) succeeds, or exits 2 with one stderr line,
    with and without --debug. 100 examples by default (about 4 s)."""
    path = data.draw(st.sampled_from(LEAVES), label="field")
    argv = ["policy", "validate", str(policy_dir)]
    env: dict[str, str] = {}
    if data.draw(st.booleans(), label="from environment"):
        env[env_name(path)] = data.draw(st.sampled_from(GARBAGE) | _TEXT, label="value")
    else:
        value: Any = data.draw(_YAML_VALUES, label="value")
        for part in reversed(path):
            value = {part: value}
        config = policy_dir.parent / f"{policy_dir.name}-config.yaml"
        config.write_text(yaml.safe_dump(value), encoding="utf-8")
        argv += ["--config", str(config)]
    with environment(env):
        code, out, err = run_main(argv)
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 0:
            assert out and err == ""
            return
        assert out == "" and err.count("\n") == 1 and err.startswith("moderator: "), err
        debug_code, _, debug_err = run_main(["--debug", *argv])
    assert debug_code == 2
    assert debug_err.splitlines()[-1] == err.rstrip("\n")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MODERATOR_KAFKA__SASL_MECHANISM": "FOO"}, "kafka.sasl_mechanism"),
        ({"MODERATOR_S3__ENDPOINT_URL": "http://AKID:hunter2@minio:9000"}, "s3.endpoint_url"),
        ({"MODERATOR_S3__ENDPOINT_URL": "minio:9000"}, "s3.endpoint_url"),
        ({"MODERATOR_TENANCY__BUCKET_MAP": "not json"}, "MODERATOR_TENANCY__BUCKET_MAP"),
        ({"MODERATOR_ENGINE__OPENAI__MAX_RESPONSE_BYTES": "10"}, "max_response_bytes"),
        ({"MODERATOR_KAFKA__TOPICS": "[1,"}, "MODERATOR_KAFKA__TOPICS"),
        ({"MODERATOR_KAFKA__BOOTSTRAP_SERVERS": ""}, "kafka.bootstrap_servers: empty"),
        ({"MODERATOR_KAFKA__BOOTSTRAP_SERVERS": "k:9092,"}, "kafka.bootstrap_servers: an empty"),
    ],
)
def test_run_with_a_bad_setting_exits_2_before_connecting(env: dict[str, str], needle: str) -> None:
    with environment(env), mock.patch("moderator.service.run_service") as started:
        line = assert_one_line_failure(["run"])
    started.assert_not_called()
    assert needle in line
    assert "hunter2" not in line


def test_credentials_in_the_s3_endpoint_are_refused_masked() -> None:
    url = "https://AKID:hunter2@s3.example:9000"
    with environment({"MODERATOR_S3__ENDPOINT_URL": url}), pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "hunter2" not in message and "https://AKID:***@s3.example:9000" in message


def test_a_real_process_keeps_exit_codes_and_one_line() -> None:
    """As a shell runs it: no logging configured, librdkafka loaded, --debug or not."""
    env = {**os.environ, "MODERATOR_KAFKA__SASL_MECHANISM": "FOO"}
    command = [sys.executable, "-m", "moderator.cli.main"]
    plain = subprocess.run([*command, "run"], env=env, capture_output=True, text=True, check=False)
    debug = subprocess.run(
        [*command, "--debug", "run"], env=env, capture_output=True, text=True, check=False
    )
    assert (plain.returncode, plain.stdout) == (2, "")
    assert plain.stderr.count("\n") == 1 and "kafka.sasl_mechanism" in plain.stderr
    assert (debug.returncode, debug.stdout) == (2, "")
    assert "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.rstrip("\n")


# -- audit URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("u:secret@host/db", "not a database URL: 'u:***@host/db'"),
        ("postgresql://u:secret@host:notaport/db", "malformed host or port"),
        ("postgresql://u:secret@host:99999/db", "port 99999 out of range"),
        ("postgresql://u:secret@[::1/db", "malformed host or port"),
        ("mysql://u:secret@host/db", "unsupported database 'mysql'"),
    ],
)
def test_audit_url_errors_mask_the_password(url: str, needle: str) -> None:
    with environment({"MODERATOR_AUDIT__URL": url}):
        line = assert_one_line_failure(["audit", "query"])
    assert needle in line and "secret" not in line


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "query"],
        ["audit", "verify"],
        ["audit", "retention"],
        ["audit", "sink"],
        ["audit", "export-dsa"],
        ["explain", "e-1"],
        ["audit", "serve"],
    ],
)
def test_a_postgresql_store_without_its_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    env = {
        "MODERATOR_AUDIT__URL": "postgresql://u:secret@127.0.0.1:1/db",
        "MODERATOR_AUDIT__RETENTION_DAYS": '{"default": 30}',
        "MODERATOR_DSA_PUID_SALT": "a-salt-of-twenty-chars",
        "MODERATOR_AUDIT__API_TOKENS": json.dumps({"a" * 64: ["*"]}),
    }
    with environment(env):
        code, out, err = run_main(argv)
    assert (code, out) == (2, ""), err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (  # `audit verify` warns first that no anchor is configured
        "moderator: audit.url: a PostgreSQL store needs the postgres extra (psycopg is "
        "missing): pip install 'moderator[postgres]'"
    )


# -- runtime failures and librdkafka -----------------------------------------------------------


def test_unexpected_errors_are_one_line_with_exit_1(policy_dir: Path) -> None:
    with mock.patch("moderator.cli.policy.cmd_validate", side_effect=RuntimeError("boom\nmore")):
        line = assert_one_line_failure(["policy", "validate", str(policy_dir)], code=1)
    assert line == "moderator: unexpected error: RuntimeError: boom more"


def test_our_runtime_errors_keep_exit_1_under_debug(policy_dir: Path) -> None:
    error = ModeratorError("store gone at postgresql://u:secret@db/x")
    with mock.patch("moderator.cli.policy.cmd_validate", side_effect=error):
        line = assert_one_line_failure(["policy", "validate", str(policy_dir)], code=1)
    assert line == "moderator: store gone at postgresql://u:***@db/x"
    assert error_line(error) == "store gone at postgresql://u:***@db/x"


def test_librdkafka_refusing_the_configuration_is_one_config_error() -> None:
    values = {
        "kafka": {
            "bootstrap_servers": "127.0.0.1:9",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_password": "hunter2",
            "client": {"compression.type": "hunter2"},
        }
    }
    settings = Settings.model_validate(values)
    with pytest.raises(ConfigError) as caught:
        make_producer(settings)
    message = str(caught.value)
    assert message.startswith("kafka: librdkafka refused the client configuration: ")
    assert "hunter2" not in message and "\n" not in message
    bogus = Settings.model_validate({"kafka": {"client": {"no.such.property": "1"}}})
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        make_producer(bogus)


def test_a_client_built_elsewhere_and_refused_is_a_config_error(tmp_path: Path) -> None:
    """The audit sink builds its own consumer: librdkafka's refusal exits 2, one line."""
    env = {
        "MODERATOR_KAFKA__CLIENT": '{"no.such.property": "1"}',
        "MODERATOR_AUDIT__URL": f"sqlite:///{tmp_path / 'audit.db'}",
    }
    with environment(env):
        line = assert_one_line_failure(["audit", "sink"])
    assert line.startswith("moderator: kafka: ")
    assert 'No such configuration property: "no.such.property"' in line


@pytest.mark.parametrize(
    "argv", [["audit", "query", "--config=--"], ["scan", "--policies=--", "d"]]
)
def test_a_lone_double_dash_as_a_value_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one argument" in err, err


def test_run_with_a_policy_file_that_fails_exits_2_before_contacting_the_broker(
    tmp_path: Path,
) -> None:
    write_default_policy(tmp_path)
    (tmp_path / "broken.yaml").write_text("categories: {O1: {block_at: 7}}\n")
    env = {"MODERATOR_POLICIES__DIR": str(tmp_path)}
    with (
        environment(env),
        mock.patch("moderator.ingest.startup.probe_cluster") as probed,
        mock.patch("moderator.service.run_service") as started,
    ):
        line = assert_one_line_failure(["run", "--with-audit-sink"])
    probed.assert_not_called()
    started.assert_not_called()
    assert line == (
        f"moderator: {tmp_path / 'broken.yaml'}:1: categories.O1.block_at: "
        "must be from 0 to 1, not the number 7"
    )


def test_a_fenced_producer_is_explained_even_unwrapped() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from moderator.ingest.checkpoint import FENCED_HINT

    fenced = KafkaException(
        KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    )
    line = error_line(fenced)
    assert line.startswith("unexpected error: KafkaException: ")
    assert line.endswith(f": {FENCED_HINT}")
    other = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert FENCED_HINT not in error_line(other)
