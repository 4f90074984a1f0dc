"""An event id stored with one record and received again with another: which kind of conflict
it is, that the row kept stays the first one stored, and how the sink reports it (an error line
naming the event and both tenants, bounded per batch, and `moderator_audit_rows_total` by kind)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from structlog.testing import capture_logs

from moderator.audit.db.conflicts import Conflict, WriteResult
from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.audit.sink.loop import AuditSink
from moderator.audit.sink.observe import CONFLICTS_LOGGED, SinkObserver
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.telemetry import Telemetry
from tests.audit_fixtures import ALPHA, BASE, BETA, record
from tests.test_audit_sink import TOPIC, consumer, ends, settings
from tests.test_obs_http import samples


def claim(tenant: str, event_id: str = "claim-1", **extra: Any) -> dict[str, Any]:
    """The record of `event_id` decided for `tenant`, its object under the tenant's prefix."""
    extra.setdefault("key", f"{tenant}/own.png")
    return record(event_id, tenant, BASE, **extra)


def at(offset: int, doc: dict[str, Any], partition: int = 0) -> IncomingRecord:
    return IncomingRecord(TOPIC, partition, offset, doc)


def inserted(store: AuditStore, *items: IncomingRecord) -> WriteResult:
    result = store.insert(list(items))
    assert isinstance(result, WriteResult) and not result.rejected
    return result


# -- the store -----------------------------------------------------------------------------


def test_another_tenants_record_under_a_stored_event_id_is_a_tenant_conflict(
    store: AuditStore,
) -> None:
    inserted(store, at(0, claim(ALPHA)))
    result = inserted(store, at(1, claim(BETA, key="beta/secret.png"), partition=2))
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, 1)
    assert result.conflicted == (Conflict("tenant", "claim-1", ALPHA, BETA, TOPIC, 2, 1),)
    kept = store.get("claim-1")
    assert kept is not None and kept.tenant_id == ALPHA  # the first stored wins
    assert store.get("claim-1", tenant_ids=(BETA,)) is None


def test_a_conflict_within_one_batch_is_held_to_the_record_stored(store: AuditStore) -> None:
    result = inserted(store, at(0, claim(ALPHA)), at(1, claim(BETA)), at(2, claim(ALPHA)))
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 2, 1)
    assert [(c.kind, c.stored_tenant, c.tenant, c.offset) for c in result.conflicted] == [
        ("tenant", ALPHA, BETA, 1)
    ]


def test_the_kind_says_what_differs(store: AuditStore) -> None:
    inserted(store, at(0, claim(ALPHA)), at(1, claim(ALPHA, "claim-2")))
    result = inserted(
        store,
        at(2, claim(ALPHA)),  # the same record again: a redelivery, no conflict
        at(3, claim(ALPHA, key="alpha/other.png")),  # another object of the same tenant
        at(4, claim(ALPHA, "claim-2", decision="block")),  # the same object, decided again
    )
    assert (result.inserted, result.duplicates) == (0, 3)
    assert [(c.kind, c.event_id, c.offset) for c in result.conflicted] == [
        ("object", "claim-1", 3),
        ("record", "claim-2", 4),
    ]


def test_a_redacted_row_is_compared_without_its_object_key(store: AuditStore) -> None:
    inserted(store, at(0, claim(ALPHA)))
    store.redact(BASE + timedelta(seconds=1), BASE + timedelta(days=400))
    later = claim(ALPHA, decision="block")
    other_tenant = claim(BETA)
    result = inserted(store, at(1, later), at(2, other_tenant))
    assert [c.kind for c in result.conflicted] == ["record", "tenant"]


# -- the sink ------------------------------------------------------------------------------


def run_sink(broker: MemoryBroker, store: AuditStore, telemetry: Telemetry) -> AuditSink:
    s = settings()
    sink = AuditSink(
        s, store, consumer(broker, s), poll_timeout_s=0, observer=SinkObserver(telemetry.metrics)
    )
    sink.start()
    for _ in range(50):
        sink.step()
        if sink.committed == {tp: o for tp, o in ends(broker).items() if o}:
            break
    sink.close()
    return sink


def produce(broker: MemoryBroker, doc: dict[str, Any], partition: int = 0) -> None:
    broker.produce_plain(TOPIC, json.dumps(doc).encode(), partition=partition)


def test_the_sink_logs_a_tenant_conflict_with_the_event_and_both_tenants(
    broker: MemoryBroker, store: AuditStore
) -> None:
    produce(broker, claim(ALPHA))
    produce(broker, claim(BETA, key="beta/secret.png"))
    produce(broker, claim(ALPHA))  # a redelivery
    telemetry = Telemetry()
    with capture_logs() as logs:
        sink = run_sink(broker, store, telemetry)
    assert (sink.stats.inserted, sink.stats.duplicates, sink.stats.conflicts) == (1, 2, 1)
    lines = [line for line in logs if line["event"] == "audit_event_id_conflict"]
    assert lines == [
        {
            "event": "audit_event_id_conflict",
            "log_level": "error",
            "kind": "tenant",
            "event_id": "claim-1",
            "stored_tenant": ALPHA,
            "tenant": BETA,
            "topic": TOPIC,
            "partition": 0,
            "offset": 1,
        }
    ]
    summary = [line for line in logs if line["event"] == "audit_duplicate_conflicts"]
    assert len(summary) == 1
    assert summary[0]["count"] == summary[0]["tenant_conflicts"] == 1
    assert (summary[0]["object_conflicts"], summary[0]["record_conflicts"]) == (0, 0)
    assert summary[0]["unlisted"] == 0
    found = samples(telemetry)
    assert found[("moderator_audit_rows_total", (("result", "stored"),))] == 1
    assert found[("moderator_audit_rows_total", (("result", "duplicate"),))] == 1
    assert found[("moderator_audit_rows_total", (("result", "conflict_tenant"),))] == 1
    assert found[("moderator_audit_rows_total", (("result", "conflict_record"),))] == 0


def test_conflict_lines_are_bounded_per_batch_and_counted_by_kind(
    broker: MemoryBroker, store: AuditStore
) -> None:
    many = CONFLICTS_LOGGED + 5
    for n in range(many):
        store.insert([at(n, claim(ALPHA, f"claim-{n}"), partition=3)])
        produce(broker, claim(BETA, f"claim-{n}"))
    store.insert([at(many, claim(ALPHA, "again"), partition=3)])
    produce(broker, claim(ALPHA, "again", decision="block"))
    telemetry = Telemetry()
    s = settings(**{"audit.batch_size": 100})
    sink = AuditSink(
        s, store, consumer(broker, s), poll_timeout_s=0, observer=SinkObserver(telemetry.metrics)
    )
    sink.start()
    with capture_logs() as logs:
        while sink.step():
            pass
    sink.close()
    lines = [line for line in logs if line["event"] == "audit_event_id_conflict"]
    assert len(lines) == CONFLICTS_LOGGED
    assert {(line["stored_tenant"], line["tenant"]) for line in lines} == {(ALPHA, BETA)}
    (summary,) = [line for line in logs if line["event"] == "audit_duplicate_conflicts"]
    assert summary["count"] == many + 1
    assert (summary["tenant_conflicts"], summary["record_conflicts"]) == (many, 1)
    assert summary["unlisted"] == 5
    found = samples(telemetry)
    assert found[("moderator_audit_rows_total", (("result", "conflict_tenant"),))] == many
    assert found[("moderator_audit_rows_total", (("result", "conflict_record"),))] == 1
    assert found[("moderator_audit_rows_total", (("result", "duplicate"),))] == 0
