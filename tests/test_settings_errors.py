"""Settings errors: each names the key it is about and only the source that set that key;
values the service would misuse are refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from moderator.ingest.kafka import consumer_config, producer_config
from moderator.settings import SERVICE_CLIENT_KEYS, FlowSettings, Settings, load_settings
from moderator.settings_errors import env_problem
from tests.settings_fixtures import settings_error

JSON_HINT = (
    'maps and lists are written as JSON in the environment, e.g. {"key": "value"} or ["a", "b"]'
)


def _file(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "y.yaml"
    cfg.write_text(text)
    return cfg


# -- a section's rule names the key it is about, and that key's source -------------------------


def test_a_section_rule_names_its_key_and_only_that_keys_source(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = _file(tmp_path, 'kafka: {bootstrap_servers: "SSL://a:9092"}\n')
    no_env.setenv("MODERATOR_KAFKA__GROUP_ID", "g")
    no_env.setenv("MODERATOR_KAFKA__DELIVERY", "at_least_once")
    assert settings_error(cfg) == (
        "configuration error: kafka.bootstrap_servers: 'SSL://a:9092' names protocol SSL but "
        f"security_protocol is PLAINTEXT (librdkafka would skip the broker) (in {cfg})"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenancy: {rule: bucket_map}\n", "tenancy.rule: is bucket_map but bucket_map is empty"),
        (
            "fetch: {max_pixels: 1000, max_decoded_pixels: 999}\n",
            "fetch.max_decoded_pixels: 999 is too small: max_decoded_pixels must be at least "
            "max_pixels (1000)",
        ),
        (
            "fetch: {concurrency: 4, decode_workers: 8}\n",
            "fetch.decode_workers: 8 is above concurrency (4): each decodes what a fetch worker "
            "has read, so more would wait",
        ),
        (
            "flow: {low_buffered_bytes: 1, high_buffered_bytes: 1}\n",
            "flow.low_buffered_bytes: 1 must be below high_buffered_bytes (1)",
        ),
        (
            "telemetry: {otlp_endpoint: 'collector:4318'}\n",
            "telemetry.otlp_endpoint: must be an http:// or https:// URL",
        ),
        (
            "telemetry: {otlp_endpoint: 'http://u:p@collector:4318'}\n",
            "telemetry.otlp_endpoint: must not carry credentials; set OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ],
)
def test_every_section_rule_names_its_key(
    no_env: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    no_env.setenv("MODERATOR_LOG__LEVEL", "info")  # set, but not where the problem is
    cfg = _file(tmp_path, text)
    assert settings_error(cfg) == f"configuration error: {expected} (in {cfg})"


def test_a_key_check_naming_itself_keeps_its_message(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`api_tokens: ...` raised for audit.api_tokens: not a key inside the map."""
    cfg = _file(tmp_path, "audit:\n  api_tokens: {abc: ['*']}\n")
    assert settings_error(cfg).startswith(
        "configuration error: audit.api_tokens: api_tokens: a key of 3 characters is not"
    )


# -- a rule about two keys names the one the user set ------------------------------------------

IN_FLIGHT_HIGH = "flow.high_in_flight: 500 must be above low_in_flight (1000)"
IN_FLIGHT_LOW = "flow.low_in_flight: 1000 must be below high_in_flight (500)"


def test_only_the_second_key_set_in_the_environment_is_named(
    no_env: pytest.MonkeyPatch,
) -> None:
    no_env.setenv("MODERATOR_FLOW__HIGH_IN_FLIGHT", "500")
    assert settings_error() == (
        f"configuration error: {IN_FLIGHT_HIGH} (from environment MODERATOR_FLOW__HIGH_IN_FLIGHT)"
    )


def test_only_the_second_key_set_in_the_file_is_named(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = _file(tmp_path, "flow:\n  high_in_flight: 500\n  drain_grace_s: 1\n")
    no_env.setenv("MODERATOR_FLOW__POLL_BATCH", "10")  # in the section, not to blame
    assert settings_error(cfg) == f"configuration error: {IN_FLIGHT_HIGH} (in {cfg})"


def test_only_the_second_key_set_in_a_json_section_or_a_flag_is_named(
    no_env: pytest.MonkeyPatch,
) -> None:
    no_env.setenv("MODERATOR_FLOW", '{"high_in_flight": 500}')
    assert settings_error() == (
        f"configuration error: {IN_FLIGHT_HIGH} (from environment MODERATOR_FLOW)"
    )
    no_env.delenv("MODERATOR_FLOW")
    assert settings_error(None, {"flow.high_in_flight": 500}) == (
        f"configuration error: {IN_FLIGHT_HIGH} (from the command line)"
    )


def test_both_keys_set_name_the_first_as_before(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = _file(tmp_path, "flow:\n  low_in_flight: 1000\n")
    no_env.setenv("MODERATOR_FLOW__HIGH_IN_FLIGHT", "500")
    assert settings_error(cfg) == f"configuration error: {IN_FLIGHT_LOW} (in {cfg})"
    both = _file(tmp_path, "flow: {low_in_flight: 1000, high_in_flight: 500}\n")
    no_env.delenv("MODERATOR_FLOW__HIGH_IN_FLIGHT")
    assert settings_error(both) == f"configuration error: {IN_FLIGHT_LOW} (in {both})"


def test_only_the_first_key_set_is_named_as_before(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("MODERATOR_FLOW__LOW_IN_FLIGHT", "5000")
    assert settings_error() == (
        "configuration error: flow.low_in_flight: 5000 must be below high_in_flight (2000) "
        "(from environment MODERATOR_FLOW__LOW_IN_FLIGHT)"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "flow.high_buffered_bytes",
            5,
            "flow.high_buffered_bytes: 5 must be above low_buffered_bytes (134217728)",
        ),
        (
            "fetch.max_pixels",
            2_000_000_000,
            "fetch.max_pixels: 2000000000 is too large: max_pixels must be at most "
            "max_decoded_pixels (1000000000)",
        ),
    ],
)
def test_every_two_key_rule_names_the_key_set(
    no_env: pytest.MonkeyPatch, key: str, value: int, expected: str
) -> None:
    assert settings_error(None, {key: value}) == (
        f"configuration error: {expected} (from the command line)"
    )


def test_a_two_key_rule_reads_as_its_first_key_outside_the_loader() -> None:
    with pytest.raises(ValidationError, match="low_in_flight: 1000 must be below high_in_flight"):
        FlowSettings(high_in_flight=500)


# -- an environment value that is not JSON ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("MODERATOR_AUDIT__API_TOKENS", "{bad", "audit.api_tokens"),
        ("MODERATOR_TENANCY__UPLOAD_BUCKETS", "uploads,other", "tenancy.upload_buckets"),
        ("MODERATOR_KAFKA__TOPIC_SPECS__DLQ__CONFIGS", "a=b", "kafka.topic_specs.dlq.configs"),
        ("MODERATOR_KAFKA__TOPICS", "uploads", "kafka.topics"),
    ],
)
def test_a_value_that_is_not_json_names_its_variable(
    no_env: pytest.MonkeyPatch, name: str, value: str, key: str
) -> None:
    section = key.split(".")[0].upper()
    no_env.setenv(f"MODERATOR_{section}__ZZ_OTHER", "1")  # in the section, not to blame
    no_env.setenv(name, value)
    assert settings_error() == (
        f"configuration error: {key}: not valid JSON (from environment {name}); {JSON_HINT}"
    )


def test_two_values_that_are_not_json_are_both_named(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("MODERATOR_AUDIT__URL", "sqlite:///a.db")
    no_env.setenv("MODERATOR_AUDIT__API_TOKENS", "{bad")
    no_env.setenv("MODERATOR_AUDIT__RETENTION_DAYS", "a=1")
    assert settings_error() == (
        "configuration error: audit: a value is not valid JSON (from environment "
        f"MODERATOR_AUDIT__API_TOKENS, MODERATOR_AUDIT__RETENTION_DAYS); {JSON_HINT}"
    )


def test_no_culprit_keeps_the_section_wording() -> None:
    exc = SettingsError('error parsing value for field "audit" from source "EnvSettingsSource"')
    environ = {"MODERATOR_AUDIT__URL": "x", "MODERATOR_AUDIT__API_TOKENS": "{}"}
    assert env_problem(exc, environ, Settings) == (
        "configuration error: audit: a value is not valid JSON (from environment "
        f"MODERATOR_AUDIT__API_TOKENS, MODERATOR_AUDIT__URL); {JSON_HINT}"
    )


# -- instance_id ------------------------------------------------------------------------------


def test_an_empty_instance_id_is_refused(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = _file(tmp_path, 'instance_id: ""\n')
    expected = (
        "configuration error: instance_id: empty: it names this pod's Kafka clients and "
        "transactional id (moderator-{group_id}-{instance_id}), which no two pods may share; "
        "leave it unset for the host name"
    )
    assert settings_error(cfg) == f"{expected} (in {cfg})"
    no_env.setenv("MODERATOR_INSTANCE_ID", " \t")
    assert settings_error(cfg) == f"{expected} (from environment MODERATOR_INSTANCE_ID)"
    no_env.setenv("MODERATOR_INSTANCE_ID", "pod-0")
    assert load_settings(cfg).transactional_id == "moderator-moderator-pod-0"


# -- kafka.client properties the service sets itself -------------------------------------------


@pytest.mark.parametrize("key", sorted(SERVICE_CLIENT_KEYS))
def test_a_client_property_the_service_sets_is_refused(
    no_env: pytest.MonkeyPatch, tmp_path: Path, key: str
) -> None:
    cfg = _file(tmp_path, f"kafka:\n  client:\n    fetch.min.bytes: 1\n    {key}: '1'\n")
    assert settings_error(cfg) == (
        f"configuration error: kafka.client.{key}: set by the service "
        f"({SERVICE_CLIENT_KEYS[key]}); remove it (in {cfg})"
    )


def test_the_transactional_id_line(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("MODERATOR_KAFKA__CLIENT", '{"transactional.id": "t"}')
    assert settings_error() == (
        "configuration error: kafka.client.transactional.id: set by the service (from "
        "kafka.transactional_id, by default moderator-{group_id}-{instance_id}); remove it "
        "(from environment MODERATOR_KAFKA__CLIENT)"
    )


def test_the_refused_properties_are_the_ones_the_service_overrides(
    no_env: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(overrides={"kafka.static_membership": True})
    assert settings.kafka.delivery == "exactly_once"
    overridden = set(consumer_config(settings)) | set(producer_config(settings))
    overridden -= set(settings.kafka.client_config())
    aliases = {"request.required.acks"}  # librdkafka's other name for acks
    kept = {"client.id", "linger.ms", "compression.type"}  # the audit anchor producer uses them
    assert set(SERVICE_CLIENT_KEYS) - aliases == overridden - kept


def test_other_client_properties_pass(no_env: pytest.MonkeyPatch) -> None:
    client = {"fetch.min.bytes": 1, "linger.ms": 20, "compression.type": "zstd"}
    settings = load_settings(overrides={"kafka.client": client})
    assert settings.kafka.client == client


# -- engine.base_url ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x/v1", "127.0.0.1:23333/v1", "http:///v1", "http://[::1"])
def test_a_base_url_that_is_not_http_is_refused_at_load(
    no_env: pytest.MonkeyPatch, url: str
) -> None:
    no_env.setenv("MODERATOR_ENGINE__BASE_URL", url)
    assert settings_error() == (
        "configuration error: engine.base_url: expected an http:// or https:// URL with a host, "
        f"e.g. http://127.0.0.1:23333/v1, got {url!r} (from environment "
        "MODERATOR_ENGINE__BASE_URL)"
    )


def test_a_base_url_with_a_password_is_masked(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("MODERATOR_ENGINE__BASE_URL", "ftp://u:hunter2@x/v1")
    assert "hunter2" not in settings_error()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://svc:EnginePW1@vllm:8000/v1", "no user or password in the URL"),
        ("http://svc@vllm:8000/v1", "no user or password in the URL"),
        ("http://vllm:8000/v1?api-key=QSECRET", "no query string or fragment"),
        ("http://vllm:8000/v1#x", "no query string or fragment"),
    ],
)
def test_credentials_or_a_query_in_the_base_url_are_refused(
    no_env: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    no_env.setenv("MODERATOR_ENGINE__BASE_URL", url)
    error = settings_error()
    assert f"engine.base_url: {problem}" in error and "engine.openai.api_key" in error
    assert "EnginePW1" not in error and "QSECRET" not in error


@pytest.mark.parametrize("url", ["http://vllm:8000/v1", "https://h/v1", ""])
def test_an_http_base_url_passes(no_env: pytest.MonkeyPatch, url: str) -> None:
    no_env.setenv("MODERATOR_ENGINE__BASE_URL", url)
    assert load_settings().engine.base_url == url


# -- duplicate keys in the file -----------------------------------------------------------------


def test_a_duplicate_key_in_the_file_is_refused(tmp_path: Path) -> None:
    cfg = _file(tmp_path, "kafka:\n  group_id: a\n  delivery: at_least_once\n  group_id: b\n")
    assert settings_error(cfg) == f"config file {cfg} line 4: duplicate key 'group_id'"
    cfg = _file(tmp_path, "log: {level: info}\nlog: {level: debug}\n")
    assert settings_error(cfg) == f"config file {cfg} line 2: duplicate key 'log'"


def test_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    cfg = _file(
        tmp_path,
        "kafka:\n  topic_specs:\n"
        "    uploads: &spec {partitions: 6, replication_factor: 1}\n"
        "    dlq:\n      <<: *spec\n      partitions: 2\n",
    )
    specs = load_settings(cfg).kafka.topic_specs
    assert (specs.uploads.partitions, specs.dlq.partitions) == (6, 2)
    assert specs.dlq.replication_factor == 1


# -- a section given as a scalar ----------------------------------------------------------------


def test_a_section_given_as_a_scalar_is_refused_even_beside_a_flag(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = _file(tmp_path, "engine: openai\n")
    expected = (
        f"configuration error: engine: is a section, a mapping of keys, not 'openai' (in {cfg})"
    )
    assert settings_error(cfg) == expected
    assert settings_error(cfg, {"engine.kind": "fake"}) == expected  # the flag does not hide it
    cfg = _file(tmp_path, "engine:\n  openai: 5\n")
    assert settings_error(cfg).startswith("configuration error: engine.openai: is a section, ")


def test_a_section_given_as_a_scalar_on_the_command_line_is_named_too() -> None:
    message = settings_error(None, {"log": "debug"})
    assert message.startswith("configuration error: log: is a section, a mapping of keys, not ")
