"""`moderator demo`: embedded broker + S3, sample uploads, the real pipeline, a verdict table."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import uuid
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from moderator.audit.db.connect import check_writable
from moderator.cli.demo_audit import store_and_show
from moderator.cli.preflight import check_settings
from moderator.dev.samples import corrupt_bytes, make_samples
from moderator.dev.stack import EmbeddedStack
from moderator.engine.factory import check_model_flag
from moderator.errors import ConfigError, ModeratorError
from moderator.explain.render import num
from moderator.ingest.topics import topic_specs
from moderator.logs import configure_logging
from moderator.obs.http import check_port
from moderator.service import Pipeline, run_service
from moderator.settings import Settings, load_settings

TENANTS = ("acme", "kidsplace", "museum")
BUCKET = "uploads"


def cmd_demo(events: int, config: Path | None, overrides: dict[str, Any]) -> int:
    """Moderate `events` generated uploads end to end and print what was decided.

    The arguments, the settings, the engine's files and the policies are checked before the
    embedded broker and S3 server start: a bad one is one line, and nothing is started."""
    if events < 1:
        raise ConfigError(f"--events: must be at least 1, got {events}")
    with as_file(files("moderator") / "data" / "demo-policies") as bundled:
        given = {"policies.dir": bundled, **{k: v for k, v in overrides.items() if v is not None}}
        # The stack's addresses are not known yet: stand-ins, replaced once it runs.
        checked = load_settings(config, _demo_settings(given, "127.0.0.1:9092", None))
        check_model_flag(checked.engine.kind, overrides.get("engine.model"))
        check_settings(checked)
        check_port(checked.http)
        check_writable(checked.audit.url)  # a mistyped audit.url fails now, not after the run
        # The topics exist before the service subscribes: on a topic it does not list yet,
        # librdkafka's consumer logs `Subscribed topic not available` (a warning line).
        topics = topic_specs(checked.kafka)
        print("starting the embedded Kafka broker and S3 server ...", file=sys.stderr)
        with EmbeddedStack(buckets=(BUCKET,), topics=topics) as stack:
            os.environ.update({k: v for k, v in stack.env().items() if k.startswith("AWS_")})
            settings = load_settings(
                config,
                _demo_settings(given, stack.bootstrap_servers, stack.s3_endpoint_url),
            )
            configure_logging(settings.log)
            try:
                return _run_demo(settings, stack, events, config)
            finally:
                gc.collect()  # Kafka clients go before the broker does: no reconnect noise


def _demo_settings(
    given: dict[str, Any], bootstrap_servers: str, s3_endpoint_url: str | None
) -> dict[str, Any]:
    """The settings overrides of a demo run: the flags, then the embedded stack's."""
    return {
        **given,
        "kafka.bootstrap_servers": bootstrap_servers,
        "kafka.delivery": "at_least_once",
        "kafka.group_id": f"demo-{uuid.uuid4().hex[:8]}",
        "kafka.commit_interval_ms": 200,
        "s3.endpoint_url": s3_endpoint_url,
        "s3.region": "us-east-1",
        "log.level": "warning",
        "kafka.client": {"log.connection.close": False},
    }


def _run_demo(settings: Settings, stack: EmbeddedStack, events: int, config: Path | None) -> int:
    stop = threading.Event()
    errors: list[BaseException] = []
    built: list[Pipeline] = []
    ready = threading.Event()

    def keep(pipeline: Pipeline) -> None:
        built.append(pipeline)
        ready.set()

    def serve() -> None:
        try:
            # The service builds the pipeline: with its metrics and `telemetry.traces`.
            run_service(settings, stop, on_built=keep)
        except BaseException as exc:  # reported below; the demo must not hang
            errors.append(exc)
            stop.set()
            ready.set()

    worker = threading.Thread(target=serve, name="moderator", daemon=True)
    started = time.monotonic()
    worker.start()
    expected = _upload_samples(settings, stack, events)
    ready.wait()
    if not built:  # the engine or the policies could not be loaded: that error, as it is
        raise errors[0] if isinstance(errors[0], ModeratorError) else _failed(errors[0])
    pipeline = built[0]
    print(
        f"engine {pipeline.engine.info.engine} ({pipeline.engine.info.name}); "
        f"{expected} upload events, then a re-upload of the first once they are judged; "
        "1 malformed message (dead-lettered and logged as `dead_lettered`)",
        file=sys.stderr,
    )
    verdicts = _read_verdicts(settings, expected, stop, timeout_s=60 + 2.0 * expected)
    if len(verdicts) == expected:
        _reupload(settings, stack)
        expected += 1
        verdicts = _read_verdicts(settings, expected, stop, timeout_s=30)
    elapsed = time.monotonic() - started
    stop.set()
    worker.join(timeout=settings.flow.drain_grace_s + 10)
    if errors:
        raise _failed(errors[0])
    from moderator.cli.explain import provider_documents

    _print_table(verdicts, provider_documents(verdicts, pipeline.policies))
    smoke = any((v.get("model") or {}).get("smoke_test") for v in verdicts)
    print(
        f"\n{len(verdicts)}/{expected} verdicts in {elapsed:.1f}s "
        f"(cache hits: {pipeline.cache.hits})"
        + ("; SMOKE-TEST model: decisions are not meaningful" if smoke else "")
    )
    if len(verdicts) < expected:
        raise ModeratorError(f"only {len(verdicts)} of {expected} verdicts arrived in time")
    store_and_show(settings, [v["event_id"] for v in verdicts], TENANTS, config)
    return 0


def _upload_samples(settings: Settings, stack: EmbeddedStack, n: int) -> int:
    s3 = stack.s3_client()
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    topic = settings.kafka.topics.uploads
    # Event ids are unique per run (the group id is): the audit store keeps one row per event
    # id, and it outlives the run (a file in the working directory by default).
    run = settings.kafka.group_id
    samples = make_samples(max(1, n - 2), seed=7)
    count = 0
    for i, sample in enumerate(samples):
        tenant = TENANTS[i % len(TENANTS)]
        key = f"{tenant}/demo/{sample.name}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=sample.data, ContentType=sample.content_type)
        _send(producer, topic, tenant, key, f"{run}-{i:04d}", len(sample.data))
        count += 1
    extras: list[tuple[str, str, bytes | None]] = [
        ("kidsplace", "kidsplace/demo/broken.jpg", corrupt_bytes(3)),  # corrupt image
        ("museum", "museum/demo/missing.jpg", None),  # object never uploaded
    ]
    for j, (tenant, key, data) in enumerate(extras[: max(0, n - count)]):
        if data is not None:
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        _send(producer, topic, tenant, key, f"{run}-x{j}", len(data) if data else None)
        count += 1
    producer.produce(topic, key=b"junk", value=b"{not json")  # dead-lettered
    producer.flush(10)
    return count


def _reupload(settings: Settings, stack: EmbeddedStack) -> None:
    """The first sample's bytes again under a new key: answered from the verdict cache."""
    data = make_samples(1, seed=7)[0].data
    key = "acme/demo/reupload-of-first.jpg"
    stack.s3_client().put_object(Bucket=BUCKET, Key=key, Body=data)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    run = settings.kafka.group_id
    _send(producer, settings.kafka.topics.uploads, "acme", key, f"{run}-reupload", len(data))
    producer.flush(10)


def _send(
    producer: Any, topic: str, tenant: str, key: str, event_id: str, size: int | None
) -> None:
    event = {
        "event_id": event_id,
        "tenant_id": tenant,
        "object": {"bucket": BUCKET, "key": key, "size": size},
        "uploaded_at": "2026-11-29T02:00:00Z",
        "context": {"surface": "post"},
    }
    producer.produce(topic, key=tenant.encode(), value=json.dumps(event).encode())


def _read_verdicts(
    settings: Settings, expected: int, stop: threading.Event, timeout_s: float
) -> list[dict[str, Any]]:
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "log.connection.close": False,
        }
    )
    topic = settings.kafka.topics.verdicts
    reader.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in _partitions(reader, topic, stop)]
    )
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline and not stop.is_set():
            for msg in reader.consume(100, 0.2):
                value = msg.value()
                if msg.error() is None and value:
                    doc = json.loads(value)
                    seen[doc["event_id"]] = doc  # at-least-once: keep one per event
    finally:
        reader.close()
    return sorted(seen.values(), key=lambda v: v["event_id"])


def _partitions(reader: Any, topic: str, stop: threading.Event) -> list[int]:
    """The topic's partitions, once the metadata lists it (the stack created it at start)."""
    while not stop.is_set():
        meta = reader.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        time.sleep(0.2)
    return []


def _print_table(
    verdicts: list[dict[str, Any]], documents: dict[str, dict[str, Any]] | None = None
) -> None:
    """One line per verdict. SCORE is the engine's; BECAUSE is the rule that decided, from the
    explain core, read from `documents` (compiled policy documents by version; default: the
    bundled demo policies). A verdict whose version is not among them shows no thresholds."""
    from moderator.cli.explain import verdict_reasons

    reasons = verdict_reasons(verdicts, documents)
    rows = [
        ("TENANT", "OBJECT", "DECISION", "ASSESSMENT / ERROR", "SCORE", "BECAUSE", "SOURCE", "MS")
    ]
    for v, because in zip(verdicts, reasons, strict=True):
        a, err = v.get("assessment"), v.get("error")
        what = f"{a['rating']} {a['category']}" if a else f"error: {err['code']}" if err else "-"
        score = a.get("score") if a else None
        rows.append(
            (
                v["tenant_id"],
                v["object"]["key"].split("/", 1)[-1][:34],
                v["decision"],
                what[:40],
                num(score) if isinstance(score, int | float) else "-",  # as recorded
                because[:48],
                v["source"],
                f"{v['timings_ms']['total']:.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _failed(exc: BaseException) -> ModeratorError:
    """The pipeline's failure; a configuration error stays one (exit 2, as `run` exits)."""
    kind = ConfigError if isinstance(exc, ConfigError) else ModeratorError
    return kind(f"pipeline failed: {exc}")
