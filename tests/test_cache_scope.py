"""`cache.scope` through the service (in-memory broker, fake engine): one image uploaded by two
tenants, one after the other, is answered from the cache for the second tenant only when the
scope is `shared`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.events.verdict import Verdict
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from tests.harness import BUCKET, TENANTS, Instance, png, settings_for, wait_for, write_policies


def _upload(broker: MemoryBroker, store: InMemoryObjectStore, event_id: str, tenant: str) -> None:
    key = f"{tenant}/{event_id}.png"
    store.put(BUCKET, key, png(7))
    event = {"event_id": event_id, "tenant_id": tenant, "object": {"bucket": BUCKET, "key": key}}
    broker.produce_plain("uploads", json.dumps(event).encode(), key=tenant.encode())


def _sources(broker: MemoryBroker) -> dict[str, str]:
    records = broker.records("moderation.verdicts")
    verdicts = [Verdict.model_validate_json(r.value) for r in records if r.value is not None]
    return {v.event_id: v.source for v in verdicts}


@pytest.mark.parametrize(("scope", "second"), [("shared", "cache"), ("tenant", "model")])
def test_a_second_tenants_copy_is_a_cache_hit_only_when_the_cache_is_shared(
    tmp_path: Path, scope: str, second: str
) -> None:
    first, other = TENANTS[0], TENANTS[1]
    broker, store = MemoryBroker(default_partitions=1), InMemoryObjectStore()
    settings = settings_for(write_policies(tmp_path / "policies"), **{"cache.scope": scope})
    instance = Instance(broker, store, settings).start()
    try:
        _upload(broker, store, "first", first)
        wait_for(lambda: "first" in _sources(broker), what="the first verdict")
        _upload(broker, store, "second", other)
        _upload(broker, store, "again", first)
        wait_for(lambda: len(_sources(broker)) == 3, what="three verdicts")
    finally:
        instance.shutdown()
    assert _sources(broker) == {"first": "model", "second": second, "again": "cache"}
