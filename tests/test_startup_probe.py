"""The start-up probe (one line naming the servers and the setting, exit 2), the `run --check`
table and its bounded checks, and `--http-port` on `run` and `audit sink`. No servers: a closed
local port stands in for a missing broker."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from unittest import mock

import confluent_kafka
import pytest

from moderator.cli import check as cli_check
from moderator.cli.main import _overrides, _parser, main
from moderator.errors import ConfigError
from moderator.ingest.startup import broker_reasons, probe_cluster, unreachable_message
from moderator.policy.bundled import write_default_policy
from moderator.settings import Settings, load_settings

_TRANSPORT = confluent_kafka.KafkaError._TRANSPORT


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _refused(broker: str, ms: int = 0) -> confluent_kafka.KafkaError:
    host, port = broker.rsplit(":", 1)
    return confluent_kafka.KafkaError(
        _TRANSPORT,
        f"{broker}/bootstrap: Connect to ipv4#{host}:{port} failed: Connection refused "
        f"(after {ms}ms in state CONNECT)",
    )


# -- the probe ---------------------------------------------------------------------------------


def test_the_probe_fails_in_one_line_within_the_timeout() -> None:
    servers = f"127.0.0.1:{_closed_port()}"
    kafka = load_settings(
        None, {"kafka.bootstrap_servers": servers, "kafka.startup_timeout_s": 1}
    ).kafka
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        probe_cluster(kafka, client_id="moderator-test-probe")
    assert time.monotonic() - started < 5
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("kafka: cannot reach the cluster within 1 s (kafka.startup_timeout_s)")
    assert f"at {servers}: Connect to" in line and "Connection refused" in line
    assert line.endswith("check kafka.bootstrap_servers (MODERATOR_KAFKA__BOOTSTRAP_SERVERS)")


def test_the_probe_returns_the_topic_names_and_builds_a_quiet_client() -> None:
    built: list[dict[str, Any]] = []

    class Admin:
        def __init__(self, conf: dict[str, Any]) -> None:
            built.append(conf)

        def list_topics(self, timeout: float) -> Any:
            assert timeout == 7
            return mock.Mock(topics={"uploads": object(), "moderation.dlq": object()})

    kafka = load_settings(None, {"kafka.startup_timeout_s": 7}).kafka
    topics = probe_cluster(kafka, client_id="c", factory=Admin)
    assert topics == frozenset({"uploads", "moderation.dlq"})
    assert built[0]["client.id"] == "c"
    assert built[0]["logger"].name.endswith(".silent")


def test_reasons_are_one_per_broker_without_the_summary() -> None:
    errors = [
        _refused("kafka-a:9092"),
        confluent_kafka.KafkaError(confluent_kafka.KafkaError._ALL_BROKERS_DOWN, "2/2 brokers"),
        _refused("kafka-b:9092"),
        _refused("kafka-a:9092", ms=3),
    ]
    assert broker_reasons(errors) == {
        "kafka-a:9092": "Connect to ipv4#kafka-a:9092 failed: Connection refused",
        "kafka-b:9092": "Connect to ipv4#kafka-b:9092 failed: Connection refused",
    }


def test_the_line_names_each_broker_and_the_security_settings_when_set() -> None:
    kafka = load_settings(
        None, {"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "PLAIN"}
    ).kafka
    exc = confluent_kafka.KafkaException(confluent_kafka.KafkaError(_TRANSPORT, "no metadata"))
    errors = [_refused(f"kafka-{n}:9092") for n in "abcd"]
    line = unreachable_message(kafka, "kafka-a:9092,kafka-b:9092", errors, exc)
    assert "kafka-a:9092: Connect to" in line and "kafka-c:9092: Connect to" in line
    assert "kafka-d:9092: Connect" not in line and "(+1 more)" in line
    assert line.endswith("and kafka.security_protocol, kafka.sasl_*, kafka.ssl_*")
    alone = unreachable_message(kafka, "k:1", [], exc)
    assert "at k:1: no metadata; check" in alone


def test_run_without_a_broker_exits_2_before_building_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{_closed_port()}\n")
    env = {"MODERATOR_KAFKA__STARTUP_TIMEOUT_S": "1"}
    with mock.patch.dict("os.environ", env), mock.patch("moderator.service.run_service") as ran:
        assert main(["run", "--config", str(config), "--engine", "fake"]) == 2
    ran.assert_not_called()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("moderator: kafka: cannot reach the cluster within 1 s")


# -- run --check -------------------------------------------------------------------------------


def _settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides)


def test_bounded_checks_report_ok_failures_and_the_late_ones() -> None:
    def fine(_: Settings) -> str:
        return "all good"

    def broken(_: Settings) -> str:
        raise ConfigError("bucket b: does not exist")

    def crashing(_: Settings) -> str:
        raise RuntimeError("boom")

    def slow(_: Settings) -> str:
        time.sleep(5)
        return "too late"

    checks = {"fine": fine, "broken": broken, "crashing": crashing, "slow": slow}
    started = time.monotonic()
    results = cli_check.bounded(_settings(), checks, timeout_s=0.2, margin_s=0.1)
    assert time.monotonic() - started < 2
    assert [(r.check, r.status, r.detail) for r in results] == [
        ("fine", "ok", "all good"),
        ("broken", "FAIL", "bucket b: does not exist"),
        ("crashing", "FAIL", "unexpected error: RuntimeError: boom"),
        ("slow", "FAIL", "no answer within 0.2 s (kafka.startup_timeout_s)"),
    ]


def test_check_prints_a_table_and_exits_0_only_when_all_pass(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    passing = {name: (lambda _s, n=name: f"{n} fine") for name in cli_check.CHECKS}
    monkeypatch.setattr(cli_check, "CHECKS", passing)
    assert main(["run", "--check", "--engine", "fake"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["check", "status", "detail"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["config", "ok"],
        ["kafka", "ok"],
        ["s3", "ok"],
        ["engine", "ok"],
        ["policies", "ok"],
    ]
    assert "engine.kind=fake" in lines[1]

    def failing(_: Settings) -> str:
        raise ConfigError("nope")

    monkeypatch.setattr(cli_check, "CHECKS", {**passing, "s3": failing})
    assert main(["run", "--check"]) == 2
    out, err = capsys.readouterr()
    assert "s3        FAIL    nope" in out
    assert err == "moderator: run --check: 1 of 5 checks failed: s3\n"


def test_check_with_bad_settings_fails_config_and_skips_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with mock.patch.dict("os.environ", {"MODERATOR_KAFKA__DELIVERY": "sometimes"}):
        assert main(["run", "--check"]) == 2
    rows = [line.split(maxsplit=2) for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0][:2] == ["config", "FAIL"] and "kafka.delivery" in rows[0][2]
    assert {row[1] for row in rows[1:]} == {"skipped"}


def test_the_engine_and_policy_checks(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    write_default_policy(policies)
    settings = _settings(**{"engine.kind": "fake", "policies.dir": policies})
    assert cli_check.check_engine(settings).startswith("fake")
    assert "tenant(s)" in cli_check.check_policies(settings)
    (policies / "acme.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ConfigError, match="unknown base policy 'nowhere'"):
        cli_check.check_policies(settings)
    (policies / "acme.yaml").write_text("owner: 3\nschema: 2\n")
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\); run `moderator policy valid"):
        cli_check.check_policies(settings)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "does not exist"),
        ({"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "access denied"),
        ({"Error": {"Code": "301"}, "ResponseMetadata": {"HTTPStatusCode": 301}}, "s3.region"),
        ({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "503"),
    ],
)
def test_s3_reasons_are_short(response: dict[str, Any], reason: str) -> None:
    assert reason in cli_check._s3_reason(response, "tenancy.upload_buckets")


def test_s3_check_needs_a_bucket() -> None:
    with pytest.raises(ConfigError, match=r"tenancy\.upload_buckets is empty"):
        cli_check.check_s3(_settings(**{"tenancy.upload_buckets": []}))


# -- --http-port -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["run"], ["audit", "sink"]])
def test_http_port_flag_maps_to_the_http_port_setting(argv: list[str]) -> None:
    args = _parser().parse_args([*argv, "--http-port", "9500"])
    assert _overrides(args)["http.port"] == 9500
    assert load_settings(None, _overrides(args)).http.port == 9500
    unset = _overrides(_parser().parse_args(argv))
    assert unset["http.port"] is None
    assert load_settings(None, unset).http == load_settings().http  # the flag adds nothing


def test_http_port_out_of_range_is_a_config_error() -> None:
    args = _parser().parse_args(["run", "--http-port", "70000"])
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_settings(None, _overrides(args))
