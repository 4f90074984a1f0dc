"""Shared set-up of the replay tests: uploads moderated once under a first policy directory."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer

from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from moderator.service import build_pipeline
from moderator.settings import load_settings
from service_support import ServiceThread

TENANTS = ("acme", "kids", "news")
BUCKET = "uploads"


@dataclass
class Moderated:
    """A topic of uploads, their live verdicts, and the config file both runs share."""

    config: Path
    topics: dict[str, str]
    group: str
    verdicts: dict[str, dict[str, Any]]  # event id -> live verdict
    keys: dict[str, str]  # event id -> object key


def settings_file(
    path: Path,
    stack: EmbeddedStack,
    topics: dict[str, str],
    group: str,
    *,
    bootstrap: str | None = None,
    delivery: str = "at_least_once",
) -> Path:
    values = {
        "engine": {"kind": "fake", "fake": {"unsafe_rate": 0.6}, "retries": 0},
        "kafka": {
            "bootstrap_servers": bootstrap or stack.bootstrap_servers,
            "delivery": delivery,
            "group_id": group,
            "commit_interval_ms": 200,
            "topics": topics,
        },
        "s3": {"endpoint_url": stack.s3_endpoint_url, "region": "us-east-1"},
        "audit": {"url": f"sqlite:///{path.parent / 'no-audit-store.db'}"},
        "log": {"level": "warning"},
    }
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def moderate(
    stack: EmbeddedStack,
    workdir: Path,
    n: int,
    *,
    timestamps: list[int] | None = None,
    bootstrap: str | None = None,
    delivery: str = "at_least_once",
) -> Moderated:
    """Upload `n` images for three tenants, publish their events (with `timestamps` when
    given), and moderate them with `moderator run`'s service under the default policy."""
    suffix = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{suffix}" for t in ("uploads", "verdicts", "audit", "dlq", "replay")}
    group = f"moderator-{suffix}"
    p1 = workdir / "p1"
    p1.mkdir()
    write_default_policy(p1)
    for tenant in TENANTS:
        (p1 / f"{tenant}.yaml").write_text("on_error: review\n")
    config = settings_file(
        workdir / "settings.yaml", stack, topics, group, bootstrap=bootstrap, delivery=delivery
    )
    bootstrap = bootstrap or stack.bootstrap_servers
    s3 = stack.s3_client()
    keys = {f"ev-{i}": f"{TENANTS[i % 3]}/{suffix}/img-{i}.png" for i in range(n)}
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda item: s3.put_object(
                    Bucket=BUCKET, Key=item[1], Body=make_sample("png", item[0], (64, 48)).data
                ),
                enumerate(keys.values()),
            )
        )
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, (event_id, key) in enumerate(keys.items()):
        event = {
            "event_id": event_id,
            "tenant_id": TENANTS[i % 3],
            "object": {"bucket": BUCKET, "key": key},
        }
        extra = {"timestamp": timestamps[i]} if timestamps else {}
        producer.produce(topics["uploads"], value=json.dumps(event).encode(), **extra)
    producer.flush(30)
    settings = load_settings(config, {"policies.dir": p1})
    with ServiceThread(settings, build_pipeline(settings), join_s=30) as service:
        docs = read_topic(bootstrap, topics["verdicts"], n, 120)
        assert service.alive, f"the service stopped: {service.errors}"
    verdicts = {d["event_id"]: d for d in docs}
    assert len(verdicts) == n
    return Moderated(config, topics, group, verdicts, keys)


def read_topic(bootstrap: str, topic: str, want: int, timeout: float) -> list[dict[str, Any]]:
    """At least `want` JSON values of `topic` (all of them once it is quiet)."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in reader.consume(500, 0.2) if m.error() is None]
            out.extend(json.loads(m.value()) for m in batch)
            if batch:
                idle_since = time.monotonic()
            elif len(out) >= want and time.monotonic() - idle_since > 1.5:
                break
    finally:
        reader.close()
    return out


def first_record(bootstrap: str, topic: str, timeout: float) -> bool:
    """Whether a committed record of `topic` is read within `timeout` seconds."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"watcher-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if any(m.error() is None for m in reader.consume(10, 0.2)):
                return True
    finally:
        reader.close()
    return False


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    from confluent_kafka import TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        asked = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in probe.committed(asked, timeout=10)]
    finally:
        probe.close()
