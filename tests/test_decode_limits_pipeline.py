"""The decode budget and deadline as the service runs them: one budget for every fetch worker,
error verdicts decided by the tenant's on_error, nothing left reserved."""

from __future__ import annotations

import json
from pathlib import Path

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.service import build_pipeline
from tests.harness import Instance, png, settings_for, wait_for, write_policies
from tests.hostile_images import flat_png, many_frame_gif

MiB = 1 << 20


def test_hostile_images_through_the_processor(tmp_path: Path) -> None:
    broker, store = MemoryBroker(default_partitions=2), InMemoryObjectStore()
    objects = {
        **{f"big-{i}": flat_png(3000) for i in range(6)},  # about 10 MiB each by the estimate
        "too-big": flat_png(3000, "RGBA"),  # about 78 MiB: more than the whole budget
        "frames": many_frame_gif(frames=400, side=1000),
        **{f"small-{i}": png(i) for i in range(4)},
    }
    for name, data in objects.items():
        store.put("uploads", f"acme/{name}", data)
        event = {
            "event_id": name,
            "tenant_id": "acme",
            "object": {"bucket": "uploads", "key": f"acme/{name}"},
        }
        broker.produce_plain("uploads", json.dumps(event).encode(), key=b"acme")
    settings = settings_for(
        write_policies(tmp_path),
        **{
            "fetch.concurrency": 8,
            "fetch.decode_budget_bytes": 48 * MiB,
            "fetch.decode_timeout_s": 0.5,
        },
    )
    inst = Instance(broker, store, settings).start()
    try:
        wait_for(lambda: len(broker.records("moderation.verdicts")) >= len(objects), 60, "verdicts")
    finally:
        inst.shutdown()
    assert inst.error is None
    verdicts = {
        v["event_id"]: v
        for v in (json.loads(r.value or b"{}") for r in broker.records("moderation.verdicts"))
    }
    assert set(verdicts) == set(objects)
    errors = {k: (v["error"] or {}).get("code") for k, v in verdicts.items()}
    assert errors["too-big"] == "decompression_bomb"
    assert errors["frames"] == "decode_timeout"
    assert verdicts["frames"]["decision"] == "review"  # acme: on_error review
    assert all(errors[k] is None for k in objects if k.startswith(("big-", "small-")))
    budget = inst.pipeline.processor.decode_budget
    assert budget is not None
    assert budget.total == 48 * MiB
    assert 0 < budget.peak <= 48 * MiB
    assert budget.used == 0


def test_a_budget_wait_is_bounded_by_the_decoders_not_the_fetch_workers(tmp_path: Path) -> None:
    settings = settings_for(
        write_policies(tmp_path),
        **{"fetch.concurrency": 16, "fetch.decode_workers": 2, "fetch.decode_timeout_s": 0.5},
    )
    pipeline = build_pipeline(settings, store=InMemoryObjectStore())
    try:
        budget = pipeline.processor.decode_budget
        assert budget is not None
        # two decodes ahead at most, each up to its CPU time on shared cores, twice over
        assert budget.max_wait_s == 2 * 2 * 0.5
    finally:
        pipeline.close()
