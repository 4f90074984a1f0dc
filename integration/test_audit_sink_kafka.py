"""The audit sink (real clients, read_committed) on a real Apache Kafka broker, into SQLite,
while audit records arrive in committed, aborted, timed-out and fenced transactions: what was
aborted is never stored, what was committed is stored exactly once, at its committed offset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from audit_sink_support import Running, event_ids, wait_for
from audit_support import make_record
from moderator.audit.db.store import AuditStore
from moderator.ingest.lag import group_lag
from moderator.settings import load_settings

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

PARTITIONS = 3


class _Txn:
    """A transactional producer that remembers where its records landed."""

    def __init__(self, bootstrap: str, transactional_id: str, **conf: Any) -> None:
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, **conf}
        )
        self.producer.init_transactions(30)
        self.landed: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset)

    def write(self, topic: str, values: list[bytes]) -> None:
        """Begin a transaction and write `values` to the log (flushed, not committed)."""
        self.producer.begin_transaction()
        for value in values:
            event_id = json.loads(value)["verdict"]["event_id"]
            self.producer.produce(
                topic, value, key=event_id.encode(), on_delivery=self._landed(event_id)
            )
        assert self.producer.flush(30) == 0

    def _landed(self, event_id: str) -> Any:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            self.landed[event_id] = (msg.partition(), msg.offset())

        return report


def _values(first: int, count: int) -> list[bytes]:
    return [json.dumps(make_record(i)).encode() for i in range(first, first + count)]


def _ids(values: list[bytes]) -> set[str]:
    return {json.loads(v)["verdict"]["event_id"] for v in values}


def test_sink_never_stores_aborted_records(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path
) -> None:
    bootstrap = apache_kafka.bootstrap_servers
    topic = f"audit-{unique}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(60)
    settings = load_settings(
        overrides={
            "kafka.bootstrap_servers": bootstrap,
            "kafka.group_id": f"g-{unique}",
            "kafka.topics.audit": topic,
            "kafka.session_timeout_ms": 6000,
            "kafka.client": {"log.connection.close": False},
            "audit.url": f"sqlite:///{tmp_path / 'audit.db'}",
            "audit.batch_size": 7,
            "log.level": "warning",
        }
    )
    committed = _values(0, 10) + _values(25, 10) + _values(40, 10)
    aborted = _values(10, 10)
    redone = _values(50, 10)  # aborted once, then committed: the retry of a checkpoint

    with AuditStore.open(settings.audit.url) as store:
        running = Running(settings)  # reading while the transactions below are open
        service = _Txn(bootstrap, f"service-{unique}")
        service.write(topic, committed[:10])
        service.producer.commit_transaction(30)
        service.write(topic, aborted)
        service.producer.abort_transaction(30)
        service.write(topic, redone)
        service.producer.abort_transaction(30)
        aborted_at = dict(service.landed)

        # Left open: the broker aborts it after its timeout. Until then the last stable offset
        # stays below it, so the committed transaction after it is invisible as well.
        hanging = _Txn(bootstrap, f"hanging-{unique}", **{"transaction.timeout.ms": 1000})
        hanging.write(topic, _values(20, 5))
        service.write(topic, committed[10:20])
        service.producer.commit_transaction(30)

        # A crashed instance's transaction, aborted when its successor (same transactional id)
        # starts, as a restarted pod does.
        crashed = _Txn(bootstrap, f"pod-{unique}")
        crashed.write(topic, _values(35, 5))
        successor = _Txn(bootstrap, f"pod-{unique}")
        successor.write(topic, committed[20:])
        successor.producer.commit_transaction(30)
        service.landed.clear()
        service.write(topic, redone)
        service.producer.commit_transaction(30)

        expected = _ids(committed + redone)
        wait_for(lambda: store.count() >= len(expected), 60, lambda: (store.count(), running.error))
        landed = {**successor.landed, **service.landed}
        ends = {p: 0 for p in range(PARTITIONS)}
        for partition, offset in landed.values():
            ends[partition] = max(ends[partition], offset + 1)
        group = f"g-{unique}-audit-sink"

        def caught_up() -> bool:
            lags = group_lag(admin, group, topic, timeout_s=10)
            return all((x.committed or 0) >= ends[x.partition] for x in lags)

        wait_for(caught_up, 30, lambda: group_lag(admin, group, topic, timeout_s=10))
        stats = running.finish()

        assert event_ids(store) == expected
        assert (stats.messages, stats.inserted) == (len(expected), len(expected))
        assert (stats.duplicates, stats.conflicts, stats.skipped) == (0, 0, 0)
        for event_id in _ids(redone):
            row = store.get(event_id)
            assert row is not None
            assert (row.partition, row.offset) == service.landed[event_id]
            assert (row.partition, row.offset) != aborted_at[event_id]
        # Caught up, the sink has committed each partition's last committed record + 1; the
        # offsets above are transaction markers (the timed-out abort's may come late), which
        # the lag counts.
        for lag in group_lag(admin, group, topic, timeout_s=10):
            end = ends[lag.partition]
            assert lag.committed == (end or None)
            assert lag.lag == lag.high_watermark - end
            assert lag.lag >= (1 if end else 0)
