"""An abandoned job (a replay stopping before it started the event) never completes its offset:
the loop commits only the messages before it, and a later run reads it again."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.jobs import JobDone
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.pipeline.job import Job
from moderator.pipeline.process import Processor
from moderator.service import build_pipeline
from tests.harness import BUCKET, png, settings_for, wait_for, write_policies


class AbandoningProcessor:
    """Test double around the real Processor: abandons the events named, runs the others."""

    def __init__(self, inner: Processor, abandon: set[str]) -> None:
        self.inner = inner
        self.abandon = abandon

    @property
    def buffered_bytes(self) -> int:
        return self.inner.buffered_bytes

    def submit(self, job: Job, done: JobDone) -> None:
        if job.event.event_id in self.abandon:
            done(None)
        else:
            self.inner.submit(job, done)


def test_an_abandoned_event_holds_back_its_offset_and_those_after_it(tmp_path: Path) -> None:
    broker = MemoryBroker(default_partitions=1)
    store = InMemoryObjectStore()
    for i in range(5):
        store.put(BUCKET, f"acme/{i}.png", png(i))
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": "acme",
            "object": {"bucket": BUCKET, "key": f"acme/{i}.png"},
        }
        broker.produce_plain("uploads", json.dumps(event).encode())
    settings = settings_for(write_policies(tmp_path / "policies"))
    pipeline = build_pipeline(settings, store=store)
    loop = IngestLoop(
        settings=settings,
        consumer=broker.consumer(consumer_config(settings)),
        producer=broker.producer(producer_config(settings)),
        processor=AbandoningProcessor(pipeline.processor, {"ev-2"}),
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: broker.committed_offset("g", "uploads", 0) == 2, 30, "ev-0 and ev-1")
        wait_for(lambda: loop.stats.events == 5, 30, "every message taken")
    finally:
        stop.set()
        thread.join(30)
        pipeline.close()
    assert not thread.is_alive()
    assert broker.committed_offset("g", "uploads", 0) == 2
    committed = [
        json.loads(r.value or b"{}")["event_id"] for r in broker.records("moderation.verdicts")
    ]
    assert committed == ["ev-0", "ev-1"]
