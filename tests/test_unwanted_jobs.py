"""Jobs of a partition that left this process are dropped before their next step: not fetched,
decoded or judged for a verdict nobody will publish (the loop drops their completions anyway)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moderator.emit.records import OutRecord, trace_from_headers
from moderator.events.upload import ObjectRef, UploadEvent
from moderator.events.verdict import InputCoords
from moderator.fetch.store import FetchedObject, InMemoryObjectStore
from moderator.ingest.jobs import JobDone
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.pipeline import process
from moderator.pipeline.job import Job
from tests.coalesce_rig import Rig, rig_factory
from tests.harness import BUCKET, png, settings_for, wait_for, write_policies


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rig_factory(tmp_path)


class HeldStore(InMemoryObjectStore):
    """Test double: an in-memory store whose reads wait for `gate`, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.reads = 0

    def get(self, bucket: str, key: str, version_id: str | None, max_bytes: int) -> FetchedObject:
        self.reads += 1
        assert self.gate.wait(10), "store gate never opened"
        return super().get(bucket, key, version_id, max_bytes)


def _job(event_id: str, wanted: Callable[[], bool]) -> Job:
    event = UploadEvent(
        event_id=event_id,
        tenant_id="strict",
        object=ObjectRef(bucket=BUCKET, key=f"strict/{event_id}"),
    )
    coords = InputCoords(topic="uploads", partition=0, offset=0)
    return Job(event, coords, trace_from_headers(None, event_id), time.monotonic(), wanted)


def test_an_unwanted_job_is_dropped_before_its_fetch(make_rig: Callable[..., Rig]) -> None:
    store = HeldStore()
    rig = make_rig()
    rig.processor._store = store  # the rig's processor, reading through the test double
    store.put(BUCKET, "strict/e-1", png(1))
    ended: list[list[OutRecord] | None] = []
    rig.processor.submit(_job("e-1", lambda: False), ended.append)
    wait_for(lambda: ended == [None], 5, "the job dropped")
    assert store.reads == 0 and rig.engine.items == 0


def test_a_job_unwanted_while_it_is_fetched_is_neither_decoded_nor_judged(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes: list[bytes] = []
    real = process.decode_image

    def counted(data: bytes, *args: Any, **kwargs: Any) -> Any:
        decodes.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(process, "decode_image", counted)
    store = HeldStore()
    rig = make_rig()
    rig.processor._store = store
    store.put(BUCKET, "strict/e-1", png(1))
    wanted = threading.Event()
    wanted.set()
    ended: list[list[OutRecord] | None] = []
    rig.processor.submit(_job("e-1", wanted.is_set), ended.append)
    wait_for(lambda: store.reads == 1, 5, "the fetch started")
    wanted.clear()  # its partition leaves while the object is read
    store.gate.set()
    wait_for(lambda: ended == [None], 5, "the job dropped")
    assert decodes == [] and rig.engine.items == 0
    assert rig.processor.buffered_bytes == 0  # the object's bytes were given back


class HoldingProcessor:
    """Test double of the loop's processor: keeps every job, finishes none."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    @property
    def buffered_bytes(self) -> int:
        return 0

    def submit(self, job: Job, done: JobDone) -> None:
        self.jobs.append(job)


def test_a_revoked_partitions_jobs_become_unwanted_and_the_others_stay_wanted(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker(default_partitions=2)
    for p in range(2):
        for i in range(3):
            event: dict[str, Any] = {
                "event_id": f"p{p}-{i}",
                "tenant_id": "acme",
                "object": {"bucket": BUCKET, "key": f"acme/{p}-{i}.png"},
            }
            broker.produce_plain("uploads", json.dumps(event).encode(), partition=p)
    settings = settings_for(write_policies(tmp_path / "policies"))
    held = HoldingProcessor()
    loop = IngestLoop(
        settings=settings,
        consumer=broker.consumer(consumer_config(settings)),
        producer=broker.producer(producer_config(settings)),
        processor=held,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    other = broker.consumer(consumer_config(settings))
    try:
        wait_for(lambda: len(held.jobs) == 6, 10, "every event handed over")
        assert all(job.wanted is not None and job.wanted() for job in held.jobs)
        other.subscribe(["uploads"])  # a second member: one partition moves to it
        other.consume(1, 0.1)
        wait_for(lambda: any(not job.wanted() for job in held.jobs if job.wanted), 10, "revoked")
        moved = {job.coords.partition for job in held.jobs if job.wanted and not job.wanted()}
        kept = {job.coords.partition for job in held.jobs if job.wanted and job.wanted()}
        assert len(moved) == 1 and kept == {0, 1} - moved
    finally:
        stop.set()
        thread.join(10)
        other.close()
