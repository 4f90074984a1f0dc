from __future__ import annotations

from pathlib import Path

import pytest

from moderator.errors import ConfigError
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.settings import load_settings


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
