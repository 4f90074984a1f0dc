"""Runs the real ingest loop and processor against the in-memory broker and object store."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.policy.bundled import write_default_policy
from moderator.service import Pipeline, build_pipeline
from moderator.settings import Settings, load_settings

BUCKET = "uploads"
TENANTS = ("acme", "kids", "news")


def png(seed: int, size: int = 24) -> bytes:
    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    img.putpixel((seed % size, (seed // size) % size), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_policies(directory: Path) -> Path:
    write_default_policy(directory)
    for tenant in TENANTS:
        (directory / f"{tenant}.yaml").write_text("on_error: review\n")
    return directory


def settings_for(policies: Path, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "engine.kind": "fake",
        "engine.max_wait_ms": 2,
        "engine.batch_size": 16,
        "kafka.commit_interval_ms": 20,
        "kafka.group_id": "g",
        "instance_id": "test-0",
        "policies.dir": policies,
        "flow.drain_grace_s": 5,
        "fetch.concurrency": 4,
    }
    base.update(over)
    return load_settings(overrides=base)


def seed_uploads(
    broker: MemoryBroker, store: InMemoryObjectStore, n: int, *, malformed_every: int = 0
) -> tuple[set[str], int]:
    """Put n objects and their events on `uploads`; returns (event ids, malformed count)."""
    ids: set[str] = set()
    malformed = 0
    for i in range(n):
        if malformed_every and i % malformed_every == malformed_every - 1:
            broker.produce_plain("uploads", b'{"event_id": ', key=b"bad")
            malformed += 1
            continue
        tenant = TENANTS[i % len(TENANTS)]
        key = f"{tenant}/img-{i}.png"
        store.put(BUCKET, key, png(i))
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
        }
        broker.produce_plain("uploads", json.dumps(event).encode(), key=tenant.encode())
        ids.add(f"ev-{i}")
    return ids, malformed


class Instance:
    """One moderator process: its own consumer, producer, pipeline and loop thread."""

    def __init__(
        self, broker: MemoryBroker, store: InMemoryObjectStore, settings: Settings
    ) -> None:
        self.settings = settings
        self.consumer = broker.consumer(consumer_config(settings))
        self.producer = broker.producer(producer_config(settings))
        self.pipeline: Pipeline = build_pipeline(settings, store=store)
        self.loop = IngestLoop(
            settings=settings,
            consumer=self.consumer,
            producer=self.producer,
            processor=self.pipeline.processor,
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run(self.stop)
            self.consumer.close()
        except BaseException as exc:  # the test inspects it: a crash or a fatal error
            self.error = exc
        finally:
            self.pipeline.close()

    def start(self) -> Instance:
        self.thread.start()
        return self

    def shutdown(self, timeout: float = 20) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "loop did not stop"


def verdict_ids(broker: MemoryBroker, topic: str = "moderation.verdicts") -> Counter[str]:
    return Counter(json.loads(r.value or b"{}")["event_id"] for r in broker.records(topic))


def audit_ids(broker: MemoryBroker) -> Counter[str]:
    return Counter(
        json.loads(r.value or b"{}")["verdict"]["event_id"]
        for r in broker.records("moderation.audit")
    )


def wait_for(cond: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
