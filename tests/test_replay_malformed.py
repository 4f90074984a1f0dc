"""A malformed message in a replay's range is skipped and counted, and logged as such: a replay
writes no DLQ record, so its log must not say `dead_lettered`."""

from __future__ import annotations

import threading
from pathlib import Path

from structlog.testing import capture_logs

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.memory.broker import MemoryBroker
from moderator.replay.runner import ReplayLoop
from moderator.service import build_pipeline
from tests.harness import settings_for, wait_for, write_policies


def test_a_malformed_message_is_skipped_counted_and_logged_as_skipped(tmp_path: Path) -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.produce_plain("uploads", b'{"event_id": ', key=b"bad")
    settings = settings_for(write_policies(tmp_path))
    pipeline = build_pipeline(settings, store=InMemoryObjectStore())
    loop = ReplayLoop(
        settings=settings,
        consumer=broker.consumer(consumer_config(settings)),
        producer=broker.producer(producer_config(settings)),
        processor=pipeline.processor,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    try:
        with capture_logs() as logs:
            thread.start()
            wait_for(lambda: broker.committed_offset("g", "uploads", 0) == 1, 30, "the commit")
            stop.set()
            thread.join(20)
    finally:
        stop.set()
        pipeline.close()
    assert not thread.is_alive()
    assert loop.malformed == 1
    assert list(broker.records("moderation.dlq")) == []
    [line] = [e for e in logs if e["event"] in ("malformed_skipped", "dead_lettered")]
    assert line["event"] == "malformed_skipped"
    assert (line["topic"], line["partition"], line["offset"]) == ("uploads", 0, 0)
    assert line["reason"].startswith("not JSON")
