from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from moderator.errors import ConfigError
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.settings import load_settings
from tests.settings_fixtures import settings_error


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  kind: openai\n  batch_size: 3\nkafka:\n  group_id: g1\n")
    monkeypatch.setenv("MODERATOR_ENGINE__KIND", "lmdeploy")
    monkeypatch.setenv("MODERATOR_KAFKA__DELIVERY", "at_least_once")
    s = load_settings(cfg, {"engine.kind": "fake"})
    assert s.engine.kind == "fake"
    assert s.engine.batch_size == 3  # from the file, not reset by the nested env override
    assert s.kafka.delivery == "at_least_once"
    assert s.kafka.group_id == "g1"


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception, match="frozen"):
        s.engine.kind = "fake"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("MODERATOR_ENGINE__KIND", "gpt", "engine.kind"),
        ("MODERATOR_FETCH__MAX_FRAMES", "0", "fetch.max_frames"),
        ("MODERATOR_FLOW__LOW_IN_FLIGHT", "99999", "flow"),
        ("MODERATOR_KAFKA__DELIVERY", "maybe", "kafka.delivery"),
    ],
)
def test_bad_values_name_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  knd: fake\n")
    with pytest.raises(ConfigError, match=r"engine\.knd"):
        load_settings(cfg)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_production_client_settings_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MODERATOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MODERATOR_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("MODERATOR_KAFKA__SASL_PASSWORD", "secret")
    monkeypatch.setenv("MODERATOR_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("MODERATOR_INSTANCE_ID", "pod-7")
    s = load_settings(overrides={"kafka.client": {"fetch.min.bytes": 1}})
    c = consumer_config(s)
    assert c["security.protocol"] == "SASL_SSL"
    assert c["sasl.password"] == "secret"
    assert c["ssl.ca.location"] == "/etc/ca.pem"
    assert c["fetch.min.bytes"] == 1
    assert c["isolation.level"] == "read_committed"
    assert c["enable.auto.commit"] is False
    assert c["partition.assignment.strategy"] == "cooperative-sticky"
    p = producer_config(s)
    assert p["transactional.id"] == "moderator-moderator-pod-7"
    assert "secret" not in repr(s)


def test_at_least_once_producer_is_not_transactional() -> None:
    s = load_settings(overrides={"kafka.delivery": "at_least_once"})
    p = producer_config(s)
    assert "transactional.id" not in p and p["enable.idempotence"] is True


def test_a_raw_token_as_api_tokens_key_is_not_echoed(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('audit:\n  api_tokens:\n    "s3cr3t-raw-token-value": ["acme"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "s3cr3t" not in str(err.value)
    assert "hash-token" in str(err.value)


def test_a_binary_or_nul_config_path_is_a_config_error(tmp_path: Path) -> None:
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(binary)
    with pytest.raises(ConfigError, match="invalid path"):
        load_settings(Path("bad\x00name.yaml"))


# -- error lines: the parser's reason, a suggestion, where the value came from -----------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:\n  x: 1: 2\n", "line 2: invalid YAML: mapping values are not allowed here"),
        (
            "engine: [\n",
            "line 2: invalid YAML: while parsing a flow node, expected the node content, but "
            "found '<stream end>'",
        ),
        ("a: \x01\n", "line 1: invalid YAML: unacceptable character #x0001: special characters"),
    ],
)
def test_invalid_yaml_gives_the_parsers_reason(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert settings_error(cfg).startswith(f"config file {cfg} {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafak:\n  group_id: g\n", "kafak: unknown key; did you mean 'kafka'?"),
        ("kafka:\n  bootstrap_server: h:1\n", "did you mean 'bootstrap_servers'?"),
        ("kafka:\n  topics:\n    Uploads: u\n", "kafka.topics.Uploads: unknown key; did you "),
        (
            "kafka:\n  topics:\n    images: u\n",
            "kafka.topics.images: unknown key; the keys here are audit, dlq, replay, uploads, "
            "verdicts",
        ),
        (  # a key an earlier release accepted: why it went, and that it can go
            "engine:\n  transformers:\n    trust_remote_code: true\n",
            "engine.transformers.trust_remote_code: removed in an earlier release (nothing "
            "read it: the supported architectures are transformers' own); delete it",
        ),
    ],
)
def test_an_unknown_key_gets_the_closest_valid_one(
    no_env: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    message = settings_error(cfg)
    assert expected in message
    assert message.endswith(f"(in {cfg})")  # no MODERATOR_... variable that is not set


def test_an_error_names_only_the_source_that_holds_the_value(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  delivery: maybe\nflow:\n  low_in_flight: 5000\n")
    assert settings_error(cfg).startswith("configuration error: kafka.delivery: Input should be ")
    assert f"(in {cfg}) (and 1 more problem)" in settings_error(cfg)
    assert "MODERATOR_" not in settings_error(cfg)

    no_env.setenv("MODERATOR_KAFKA__DELIVERY", "sometimes")  # the environment wins over the file
    assert settings_error(cfg).endswith(
        "(from environment MODERATOR_KAFKA__DELIVERY) (and 1 more problem)"
    )
    no_env.delenv("MODERATOR_KAFKA__DELIVERY")
    no_env.setenv("MODERATOR_kafka__deliverx", "1")  # pydantic-settings reads any case
    assert settings_error().endswith(
        "kafka.deliverx: unknown key; did you mean 'delivery'? (from environment "
        "MODERATOR_kafka__deliverx)"
    )
    no_env.delenv("MODERATOR_kafka__deliverx")

    no_env.setenv("MODERATOR_KAFKA__TOPICS", '{"uploadz": "u"}')  # inside a JSON value
    assert settings_error().endswith(
        "kafka.topics.uploadz: unknown key; did you mean 'uploads'? (from environment "
        "MODERATOR_KAFKA__TOPICS)"
    )
    no_env.delenv("MODERATOR_KAFKA__TOPICS")

    # A section's rule about two values names the first and the source that set it ...
    cfg.write_text("flow:\n  low_in_flight: 5000\n")
    assert settings_error(cfg).endswith(
        f"flow.low_in_flight: 5000 must be below high_in_flight (2000) (in {cfg})"
    )
    no_env.setenv("MODERATOR_FLOW__HIGH_IN_FLIGHT", "10")
    assert settings_error(cfg).endswith(f"(10) (in {cfg})")
    # ... or, when only the other one was set, that one and its source.
    cfg.write_text("flow:\n  drain_grace_s: 1\n")
    assert settings_error(cfg).endswith(
        "flow.high_in_flight: 10 must be above low_in_flight (1000) (from environment "
        "MODERATOR_FLOW__HIGH_IN_FLIGHT)"
    )
    no_env.delenv("MODERATOR_FLOW__HIGH_IN_FLIGHT")
    no_env.setenv("MODERATOR_HTTP__PORT", "9401")  # a flag wins over the environment
    assert settings_error(None, {"http.port": 70000}).endswith(
        "http.port: Input should be less than or equal to 65535 (from the command line)"
    )


# -- kafka.bootstrap_servers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ("", "empty: name at least one broker"),
        ("  ", "empty: name at least one broker"),
        ("kafka:9092,", "an empty entry in 'kafka:9092,' (a stray comma?)"),
        ("a:9092,,b:9092", "an empty entry in 'a:9092,,b:9092'"),
        ("a:9092 b:9092", "'a:9092 b:9092': brokers are separated by commas, not spaces"),
        ("kafka:http", "'kafka:http': the port must be a number 1..65535"),
        ("kafka:", "'kafka:': the port must be a number"),
        ("kafka:0", "'kafka:0': the port must be a number"),
        ("kafka:70000", "'kafka:70000': the port must be"),
        ("[::1]:x", "'[::1]:x': the port must be a number"),
        ("http://kafka:9092", "'http://kafka:9092': the protocol must be one of PLAINTEXT, SSL"),
        ("://kafka:9092", "'://kafka:9092': the protocol must be one of"),
    ],
)
def test_a_broker_list_librdkafka_cannot_use_is_a_config_error(
    no_env: pytest.MonkeyPatch, servers: str, problem: str
) -> None:
    no_env.setenv("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", servers)
    message = settings_error()
    assert message.startswith(f"configuration error: kafka.bootstrap_servers: {problem}")
    assert message.endswith("(from environment MODERATOR_KAFKA__BOOTSTRAP_SERVERS)")


def test_an_empty_broker_list_in_the_file_is_named(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text('kafka:\n  bootstrap_servers: " "\n')
    assert settings_error(cfg) == (
        "configuration error: kafka.bootstrap_servers: empty: name at least one broker, e.g. "
        f"kafka:9092 (in {cfg})"
    )


@pytest.mark.parametrize(
    "servers",
    [
        "kafka:9092",
        "kafka",
        "a:9092, b:9093,c",
        "10.0.0.1:9092",
        "[::1]:9092",
        "[::1]",
        "fe80::1:9092",
        "PLAINTEXT://kafka:9092",
        "plaintext://kafka",
    ],
)
def test_broker_lists_librdkafka_accepts_still_load(
    no_env: pytest.MonkeyPatch, servers: str
) -> None:
    no_env.setenv("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", servers)
    assert load_settings().kafka.bootstrap_servers == servers


def test_a_broker_protocol_must_be_the_security_protocol(no_env: pytest.MonkeyPatch) -> None:
    """librdkafka skips a `PROTOCOL://` entry that is not its security.protocol."""
    no_env.setenv("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", "SSL://kafka:9093")
    assert (
        "'SSL://kafka:9093' names protocol SSL but security_protocol is PLAINTEXT"
        in settings_error()
    )
    no_env.setenv("MODERATOR_KAFKA__SECURITY_PROTOCOL", "SSL")
    assert load_settings().kafka.security_protocol == "SSL"


@pytest.mark.parametrize(
    ("key", "setting"),
    [
        ("security.protocol", "security_protocol"),
        ("bootstrap.servers", "bootstrap_servers"),
        ("SASL.Password", "sasl_password"),
        ("ssl.key.password", "ssl_key_password"),
    ],
)
def test_a_client_key_with_a_setting_of_its_own_is_refused(
    no_env: pytest.MonkeyPatch, key: str, setting: str
) -> None:
    """In kafka.client it would bypass the setting's checks and secrecy and override it."""
    no_env.setenv("MODERATOR_KAFKA__CLIENT", f'{{"{key}": "KSECRET4"}}')
    error = settings_error()
    assert f"kafka.client.{key}: use kafka.{setting}" in error
    assert "KSECRET4" not in error


def test_run_check_stops_at_an_empty_broker_list(no_env: pytest.MonkeyPatch) -> None:
    from moderator.cli.check import run_checks

    no_env.setenv("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", "")
    with mock.patch("moderator.ingest.startup.probe_cluster") as probe:
        results = run_checks(None, {})
    probe.assert_not_called()
    assert results[0].status == "FAIL"
    assert "kafka.bootstrap_servers: empty" in results[0].detail
    assert {r.status for r in results[1:]} == {"skipped"}
