"""/healthz fails once a loop is stuck in one turn (a call that never returned)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from moderator.ingest.jobs import JobDone
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.liveness import Liveness
from moderator.pipeline.job import Job
from moderator.settings import HttpSettings, load_settings
from tests.harness import BUCKET, settings_for, wait_for, write_policies


def test_a_turn_longer_than_its_limit_is_named() -> None:
    liveness = Liveness()
    turns = {"consume loop": 100.0, "other": None}
    liveness.add("consume loop", lambda: turns["consume loop"], 60)
    liveness.add("other", lambda: turns["other"], 5)
    assert liveness.stalled(now=150.0) == []
    assert liveness.stalled(now=161.0) == ["consume loop: one turn for 61 s (limit 60 s)"]
    turns["consume loop"] = 160.0  # a new turn began
    assert liveness.stalled(now=161.0) == []


def test_the_stall_limit_setting() -> None:
    assert HttpSettings().stall_s == 180
    assert load_settings(None, {"http.stall_s": 30}).http.stall_s == 30
    with pytest.raises(ValueError, match="stall_s"):
        HttpSettings(stall_s=5)


class StuckProcessor:
    """Test double: the first event submitted blocks the loop's turn until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def buffered_bytes(self) -> int:
        return 0

    def submit(self, job: Job, done: JobDone) -> None:
        self.entered.set()
        self.release.wait(30)
        done(None)


def test_the_consume_loop_reports_when_its_current_turn_began(tmp_path: Path) -> None:
    broker = MemoryBroker(default_partitions=1)
    event = {"event_id": "ev-0", "tenant_id": "acme", "object": {"bucket": BUCKET, "key": "k"}}
    broker.produce_plain("uploads", json.dumps(event).encode())
    settings = settings_for(write_policies(tmp_path / "policies"))
    processor = StuckProcessor()
    loop = IngestLoop(
        settings=settings,
        consumer=broker.consumer(consumer_config(settings)),
        producer=broker.producer(producer_config(settings)),
        processor=processor,
    )
    assert loop.turn_started is None
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert processor.entered.wait(10)
        stuck_since = loop.turn_started
        time.sleep(0.3)
        assert loop.turn_started == stuck_since  # the turn has not ended
        processor.release.set()
        wait_for(lambda: loop.turn_started != stuck_since, 10, "a new turn")
    finally:
        processor.release.set()
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
