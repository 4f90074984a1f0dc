"""Start-up probe: can any broker be reached, and which topics does the cluster hold.

`moderator run` probes before it builds its consumer and producer, so an unreachable cluster
is one line (exit 2) after at most `kafka.startup_timeout_s`, not a minute of librdkafka
retries and a timeout from `init_transactions`. `moderator run --check` reuses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import confluent_kafka
import confluent_kafka.admin

from moderator.errors import ConfigError
from moderator.ingest.client_log import silent_logger
from moderator.ingest.kafka import build_client
from moderator.settings import ENV_PREFIX, KafkaSettings

SERVERS_SETTING = "kafka.bootstrap_servers"
SERVERS_ENV = f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS"
_MAX_REASONS = 3
_ASIDE = re.compile(r"\s*\(after \d+ms in state [^)]*\)\s*$")
_BROKER_PREFIX = re.compile(r"^(?:[a-z_]+://)?(?P<address>[^\s/]+:\d+)/\S+?:\s+")


def probe_config(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    """The configuration of a client that only asks for metadata: the service's connection
    settings, its own `client.id`, and no log lines (the caller reports the outcome once)."""
    return {**kafka.client_config(), "client.id": client_id, "logger": silent_logger()}


def probe_cluster(
    kafka: KafkaSettings,
    *,
    client_id: str,
    factory: Callable[[dict[str, Any]], Any] = confluent_kafka.admin.AdminClient,
) -> frozenset[str]:
    """The names of the cluster's topics, read through a throwaway AdminClient within
    `kafka.startup_timeout_s`. Creates, consumes and produces nothing.

    ConfigError (one line, exit 2) when no broker answers in time: it names the bootstrap
    servers, why each broker failed (as the client reported it), and the setting to check.
    """
    errors: list[confluent_kafka.KafkaError] = []
    conf = {**probe_config(kafka, client_id), "error_cb": errors.append}
    admin = build_client(factory, conf, kafka)
    timeout_s = kafka.startup_timeout_s
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except confluent_kafka.KafkaException as exc:
        admin.poll(0)  # serves error_cb: each broker's reason
        raise ConfigError(
            unreachable_message(kafka, str(conf["bootstrap.servers"]), errors, exc)
        ) from exc
    return frozenset(metadata.topics)


def unreachable_message(
    kafka: KafkaSettings,
    servers: str,
    errors: list[confluent_kafka.KafkaError],
    exc: confluent_kafka.KafkaException,
) -> str:
    """The one line for a cluster that did not answer: servers, reasons, settings to check."""
    by_broker = broker_reasons(errors)
    if len(by_broker) == 1:  # the address is in the line already
        reasons = list(by_broker.values())
    else:
        reasons = [
            f"{broker}: {reason}" if broker else reason for broker, reason in by_broker.items()
        ]
    if not reasons:
        error = exc.args[0] if exc.args else None
        reasons = [error.str() if isinstance(error, confluent_kafka.KafkaError) else str(exc)]
    shown = "; ".join(reasons[:_MAX_REASONS])
    if len(reasons) > _MAX_REASONS:
        shown += f" (+{len(reasons) - _MAX_REASONS} more)"
    check = f"{SERVERS_SETTING} ({SERVERS_ENV})"
    if kafka.security_protocol is not None or kafka.sasl_mechanism is not None:
        check += " and kafka.security_protocol, kafka.sasl_*, kafka.ssl_*"
    return (
        f"kafka: cannot reach the cluster within {kafka.startup_timeout_s:g} s "
        f"(kafka.startup_timeout_s) at {servers}: {shown}; check {check}"
    )


def broker_reasons(errors: list[confluent_kafka.KafkaError]) -> dict[str, str]:
    """{host:port: the first reason it reported} ("" for errors naming no broker); the
    all-brokers-down summary is left out (the per-broker reasons say more)."""
    seen: dict[str, str] = {}
    for error in errors:
        if error.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            continue
        text = _ASIDE.sub("", " ".join(error.str().split()))
        prefix = _BROKER_PREFIX.match(text)
        broker = prefix["address"] if prefix is not None else ""
        seen.setdefault(broker, text[prefix.end() :] if prefix is not None else text)
    return seen
