"""docs/schemas/ holds the schemas the models give, and the records the service writes obey them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from moderator.events import schemas
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from tests.harness import BUCKET, Instance, seed_uploads, settings_for, wait_for, write_policies

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    found = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(found)
    return jsonschema.Draft202012Validator(found)


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_the_released_schema_is_what_the_models_give(name: str) -> None:
    assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == schemas.render(name), (
        f"docs/schemas/{name} is out of date: python -m moderator.events.schemas docs/schemas"
    )


def test_the_command_writes_every_schema(tmp_path: Path) -> None:
    assert schemas.main([str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(schemas.SCHEMAS)
    assert schemas.main([]) == 2


def test_upload_events_as_the_docs_describe_them() -> None:
    check = _validator("upload-event.v1.json")
    least = {"event_id": "e1", "tenant_id": "acme", "object": {"bucket": "b", "key": "acme/x"}}
    full = {
        **least,
        "object": {
            "bucket": "b",
            "key": "acme/x",
            "version_id": "3",
            "etag": "abc",
            "size": 12,
            "content_type": "image/png",
        },
        "uploaded_at": "2026-01-01T12:00:00+01:00",
        "context": {"surface": "post", "user_id": "u-1", "app": "web"},
        "attributes": {"k": "v"},
    }
    for good in (least, full):
        check.validate(good)
    for bad in (
        {k: v for k, v in least.items() if k != "tenant_id"},
        {**least, "tenant_id": "Acme"},
        {**least, "attributes": {"k": 1}},
    ):
        assert not check.is_valid(bad), bad


def _records(broker: MemoryBroker, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value or b"null") for r in broker.records(topic)]


def test_the_records_written_obey_their_schemas(tmp_path: Path) -> None:
    broker, store = MemoryBroker(), InMemoryObjectStore()
    seed_uploads(broker, store, 6)
    store.put(BUCKET, "acme/broken.png", b"\x89PNG\r\n\x1a\n not an image")
    for event_id, key in (("missing", "acme/none.png"), ("broken", "acme/broken.png")):
        event = {
            "event_id": event_id,
            "tenant_id": "acme",
            "object": {"bucket": BUCKET, "key": key},
        }
        broker.produce_plain("uploads", json.dumps(event).encode(), key=b"acme")
    inst = Instance(broker, store, settings_for(write_policies(tmp_path))).start()
    try:
        wait_for(lambda: len(broker.records("moderation.audit")) >= 8, what="8 audit records")
    finally:
        inst.shutdown()
    verdicts = _records(broker, "moderation.verdicts")
    audits = _records(broker, "moderation.audit")
    assert {v["source"] for v in verdicts} >= {"model", "error"}  # both shapes are checked
    for check, records in (
        (_validator("verdict.v1.json"), verdicts),
        (_validator("audit-record.v1.json"), audits),
    ):
        for record in records:
            errors = [e.message for e in check.iter_errors(record)]
            assert errors == [], (record["schema"], errors)
