"""What a shutdown's drain tells while it waits for the events in flight."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest import loop
from moderator.ingest.memory.broker import MemoryBroker
from tests.harness import (
    Instance,
    seed_uploads,
    settings_for,
    verdict_ids,
    wait_for,
    write_policies,
)


@pytest.mark.usefixtures("info_logs")
def test_a_drain_reports_its_progress_and_the_events_it_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "DRAIN_REPORT_S", 0.2)
    broker, store = MemoryBroker(default_partitions=4), InMemoryObjectStore()
    ids, _ = seed_uploads(broker, store, 40)
    settings = settings_for(
        write_policies(tmp_path / "policies"),
        **{
            "engine.fake.latency_ms": 400,  # a batch of up to 16 every 0.4 s: far from done
            "engine.batch_size": 4,
            "flow.drain_grace_s": 1.0,
            "cache.max_entries": 0,
        },
    )
    instance = Instance(broker, store, settings).start()
    wait_for(lambda: len(verdict_ids(broker)) > 0 or instance.loop.in_flight >= 20, 20, "intake")
    with capture_logs() as logs:
        instance.shutdown(timeout=30)
    events = [line["event"] for line in logs]
    progress = [line for line in logs if line["event"] == "draining"]
    assert len(progress) >= 3  # the first line, then one every 0.2 s of the 1 s grace
    assert all("left_s" in line for line in progress[1:])
    unfinished = [line["unfinished"] for line in progress]
    assert unfinished[-1] < unfinished[0]  # it counts down as events finish
    (drained,) = [line for line in logs if line["event"] == "drained"]
    assert 0 < drained["left_unfinished"] <= unfinished[-1]
    assert "event_abandoned" in events and "event_error" not in events
    assert len(verdict_ids(broker)) < len(ids)  # the abandoned ones were not published
