"""librdkafka's log lines through structlog: parsed per broker, repeats held back per window,
levels mapped, and every client built by the package wired to the forwarder."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import pytest
from structlog.testing import capture_logs

from moderator.ingest.client_log import (
    LOGGER_NAME,
    ClientLogForwarder,
    RepeatFilter,
    client_logger,
    parse_line,
    silent_logger,
)
from moderator.ingest.kafka import build_client
from moderator.logs import configure_logging
from moderator.settings import LogSettings, load_settings

REFUSED = (
    "[thrd:{b}/bootstrap]: {b}/bootstrap: Connect to ipv4#127.0.0.1:{p} failed: "
    "Connection refused (after {ms}ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logger(clock: Clock) -> Iterator[logging.Logger]:
    """A stdlib logger as confluent-kafka is given one, with its own forwarder and clock."""
    log = logging.Logger("test.librdkafka", logging.DEBUG)
    log.addHandler(ClientLogForwarder(60.0, clock=clock))
    yield log


def feed(log: logging.Logger, level: int, facility: str, client: str, text: str) -> None:
    """As confluent-kafka's log callback calls it."""
    log.log(level, "%s [%s] %s", facility, client, text)


def refused(host: str, port: int, ms: int = 0) -> str:
    return REFUSED.format(b=f"{host}:{port}", p=port, ms=ms)


def test_a_line_is_split_into_facility_client_broker_and_message() -> None:
    line = parse_line("FAIL", "rdkafka#producer-1", refused("localhost", 9092))
    assert (line.facility, line.client, line.broker) == (
        "FAIL",
        "rdkafka#producer-1",
        "localhost:9092",
    )
    assert line.message.startswith("localhost:9092/bootstrap: Connect to")
    secure = parse_line(
        "FAIL",
        "c",
        "[thrd:sasl_ssl://b-1.example:9096/1]: sasl_ssl://b-1.example:9096/1: SSL handshake failed",
    )
    assert secure.broker == "b-1.example:9096"
    assert parse_line("ERROR", "c", "[thrd:app]: 1/1 brokers are down").broker is None
    assert (
        parse_line("CONFWARN", "c", "[thrd:app]: Configuration property x is deprecated").broker
        is None
    )


def test_the_kind_ignores_what_changes_between_repeats() -> None:
    first = parse_line("FAIL", "a", refused("localhost", 9092, ms=0))
    later = parse_line(
        "FAIL",
        "b",
        "[thrd:localhost:9092/1]: localhost:9092/1: Connect to ipv6#[::1]:9092 failed: "
        "Connection refused (after 12ms in state CONNECT, 4 identical error(s) suppressed)",
    )
    assert first.kind == later.kind
    assert first.broker == later.broker
    other = parse_line(
        "FAIL", "a", "[thrd:localhost:9092/1]: localhost:9092/1: SASL authentication error"
    )
    assert other.kind != first.kind


def test_the_repeat_filter_admits_one_per_window_and_counts_the_rest(clock: Clock) -> None:
    repeats = RepeatFilter(60.0, clock=clock)
    assert repeats.admit("k") == 0
    assert [repeats.admit("k") for _ in range(5)] == [None] * 5
    assert repeats.admit("other") == 0
    clock.now += 59.9
    assert repeats.admit("k") is None
    clock.now += 0.2
    assert repeats.admit("k") == 6
    assert repeats.admit("k") is None


def test_the_repeat_filter_forgets_the_oldest_keys(clock: Clock) -> None:
    repeats = RepeatFilter(60.0, clock=clock, max_keys=2)
    for key in ("a", "b", "c"):
        assert repeats.admit(key) == 0
    assert repeats.admit("a") == 0  # forgotten, so admitted again
    assert repeats.admit("c") is None


def test_a_30_s_outage_of_two_brokers_is_a_handful_of_lines(
    logger: logging.Logger, clock: Clock
) -> None:
    """Several clients, each retrying both brokers about every 50 ms for 30 s."""
    with capture_logs() as logs:
        for step in range(600):
            clock.now += 0.05
            for client in ("rdkafka#producer-1", "rdkafka#consumer-2", "rdkafka#producer-3"):
                feed(logger, logging.ERROR, "FAIL", client, refused("kafka-a", 9092, ms=step % 3))
                feed(logger, logging.ERROR, "FAIL", client, refused("kafka-b", 9092))
            feed(
                logger,
                logging.ERROR,
                "ERROR",
                "rdkafka#producer-1",
                "[thrd:app]: 2/2 brokers are down",
            )
    assert len(logs) == 3
    assert {e.get("broker") for e in logs} == {"kafka-a:9092", "kafka-b:9092", None}
    assert {(e["event"], e["log_level"]) for e in logs} == {("kafka_client_log", "warning")}
    assert all("repeated" not in e for e in logs)
    clock.now += 31
    with capture_logs() as later:
        feed(logger, logging.ERROR, "FAIL", "rdkafka#producer-1", refused("kafka-a", 9092))
    assert len(later) == 1
    assert later[0]["repeated"] == 3 * 600 - 1
    assert later[0]["message"].startswith("kafka-a:9092/bootstrap: Connect to ipv4#127.0.0.1:9092")


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.CRITICAL, "error"),
        (logging.ERROR, "warning"),
        (logging.WARNING, "warning"),
        (logging.INFO, "info"),
        (logging.DEBUG, "debug"),
    ],
)
def test_levels_are_mapped(logger: logging.Logger, level: int, expected: str) -> None:
    configure_logging(LogSettings(level="debug", format="json"))  # the session logs at warning
    try:
        with capture_logs() as logs:
            feed(logger, level, "FAC", "rdkafka#producer-1", "[thrd:main]: something happened")
    finally:
        configure_logging(LogSettings(level="warning", format="json"))
    assert [(e["log_level"], e["facility"], e["message"]) for e in logs] == [
        (expected, "FAC", "something happened")
    ]


def test_urls_with_passwords_are_masked(logger: logging.Logger) -> None:
    with capture_logs() as logs:
        feed(
            logger,
            logging.WARNING,
            "OIDC",
            "c",
            "[thrd:main]: token endpoint https://u:hunter2@idp/x failed",
        )
    assert "hunter2" not in logs[0]["message"] and "u:***@idp" in logs[0]["message"]


def test_a_record_not_from_confluent_kafka_is_forwarded_whole(logger: logging.Logger) -> None:
    with capture_logs() as logs:
        logger.warning("plain %s", "text")
    assert [(e["facility"], e["message"]) for e in logs] == [("LOG", "plain text")]


def test_the_shared_logger_has_one_forwarder_and_does_not_propagate() -> None:
    first, second = client_logger(), client_logger()
    assert first is second and first.name == LOGGER_NAME
    assert sum(isinstance(h, ClientLogForwarder) for h in first.handlers) == 1
    assert not first.propagate and not silent_logger().propagate


def test_build_client_gives_every_client_the_shared_logger_unless_one_is_named() -> None:
    kafka = load_settings().kafka
    built: list[dict[str, Any]] = []

    def factory(conf: dict[str, Any]) -> object:
        built.append(conf)
        return object()

    build_client(factory, {"bootstrap.servers": "b:9092"}, kafka)
    build_client(factory, {"bootstrap.servers": "b:9092", "logger": silent_logger()}, kafka)
    assert built[0]["logger"] is client_logger()
    assert built[1]["logger"] is silent_logger()


def test_a_real_client_against_a_closed_port_writes_no_raw_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """librdkafka writes to file descriptor 2 itself when no logger is set: capfd sees that."""
    kafka = load_settings(None, {"kafka.bootstrap_servers": "127.0.0.1:1"}).kafka
    producer = build_client(confluent_kafka.Producer, kafka.client_config(), kafka)
    with capture_logs() as logs:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            producer.poll(0.1)
    producer.flush(0)
    assert "%3|" not in capfd.readouterr().err
    failures = [e for e in logs if e.get("broker") == "127.0.0.1:1"]
    assert len(failures) <= 1  # at most one per window (none if an earlier test saw it)
