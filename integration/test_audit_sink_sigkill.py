"""Acceptance: `moderator audit sink` SIGKILLed three times while storing 10,000 audit records
from a `moderator dev-stack` broker into SQLite, restarted each time: exactly 10,000 rows, and
`moderator audit verify` passes; after one row's record is edited in the database, verify exits
3 and names that row's event_id."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from audit_support import make_record

pytestmark = pytest.mark.slow

RECORDS = 10_000
KILL_AT = (2_000, 4_000, 6_000)
TENANTS = ("kids", "news", "museum")
CLI = [sys.executable, "-m", "moderator.cli.main"]


@pytest.fixture(scope="module")
def dev_stack() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [*CLI, "dev-stack"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        name, _, value = line.removeprefix("export ").strip().partition("=")
        env[name] = value.strip("'")
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc.stdout.close()


def stored(db: Path, sql: str = "SELECT count(*) FROM audit_records") -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created (or not migrated) yet
        return 0
    finally:
        conn.close()


def committed_everything(bootstrap: str, group: str, topic: str) -> bool:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        done = {tp.partition: tp.offset for tp in reader.committed(parts, timeout=10)}
        ends = {p.partition: reader.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        return done == ends
    finally:
        reader.close()


def assert_nothing_pruned(bootstrap: str, topic: str) -> None:
    """librdkafka's mock cluster drops a partition's oldest records beyond ~5 MiB (measured:
    its low watermark moves); records it dropped could never reach the store."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        lows = [reader.get_watermark_offsets(p, timeout=10)[0] for p in parts]
    finally:
        reader.close()
    assert lows == [0, 0, 0, 0], f"the embedded broker pruned {topic}: low watermarks {lows}"


def test_sigkilled_sink_stores_every_record_exactly_once(
    dev_stack: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    bootstrap = dev_stack["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"]
    topic, group = f"audit-{run}", f"moderator-{run}"
    db, anchors, logs = tmp_path / "audit.db", tmp_path / "anchors.jsonl", tmp_path / "sink.log"
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "lz4"})
    for i in range(RECORDS):
        record = make_record(i, tenant=TENANTS[i % 3])
        if i % 100:  # the embedded broker keeps ~5 MiB per partition: keep the topic small
            del record["policy_document"]
        value = json.dumps(record).encode()
        producer.produce(topic, key=f"{TENANTS[i % 3]}:{i}".encode(), value=value)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert_nothing_pruned(bootstrap, topic)

    env = {
        **os.environ,
        **dev_stack,
        "MODERATOR_KAFKA__DELIVERY": "at_least_once",
        "MODERATOR_KAFKA__GROUP_ID": group,
        "MODERATOR_KAFKA__TOPICS__AUDIT": topic,
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MODERATOR_AUDIT__URL": f"sqlite:///{db}",
        "MODERATOR_AUDIT__ANCHOR_FILE": str(anchors),
        "MODERATOR_AUDIT__ANCHOR_EVERY_S": "2",
        "MODERATOR_LOG__LEVEL": "info",
        "MODERATOR_KAFKA__CLIENT__LOG_LEVEL": "3",  # librdkafka: errors only
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start_sink() -> subprocess.Popen[bytes]:
        with logs.open("ab") as log:
            procs.append(subprocess.Popen([*CLI, "audit", "sink"], env=env, stderr=log))
        return procs[-1]

    rng = random.Random(5)
    at_kill: list[int] = []
    started = time.monotonic()
    try:
        for threshold in KILL_AT:
            proc = start_sink()
            deadline = time.monotonic() + 120
            while stored(db) < max(threshold, (at_kill or [0])[-1] + 1):
                assert proc.poll() is None, logs.read_text()[-3000:]
                assert time.monotonic() < deadline, (at_kill, stored(db))
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))  # a random moment, most likely mid-transaction
            proc.kill()
            proc.wait(10)
            at_kill.append(stored(db))
        final = start_sink()
        deadline = time.monotonic() + 240
        while not (
            stored(db) >= RECORDS and committed_everything(bootstrap, f"{group}-audit-sink", topic)
        ):
            assert final.poll() is None, logs.read_text()[-3000:]
            assert time.monotonic() < deadline, (at_kill, stored(db), logs.read_text()[-3000:])
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        # The last killed sink may have stored everything already: SIGTERM only once the final
        # one runs (before its handlers are installed, SIGTERM would simply end it).
        while logs.read_text().count('"audit_sink_started"') <= len(KILL_AT):
            assert final.poll() is None, logs.read_text()[-3000:]
            assert time.monotonic() < deadline, logs.read_text()[-3000:]
            time.sleep(0.05)
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0, logs.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    last = [
        json.loads(line) for line in logs.read_text().splitlines() if "audit_sink_stopped" in line
    ]
    print(
        f"\nrows stored at each SIGKILL: {at_kill}; {RECORDS} rows in {elapsed:.1f}s "
        f"({RECORDS / elapsed:.0f} rows/s including 3 restarts); last run: {last[-1]}"
    )
    assert 0 < at_kill[-1] < RECORDS, "the kills did not land mid-run"
    assert stored(db) == RECORDS
    assert stored(db, "SELECT count(DISTINCT event_id) FROM audit_records") == RECORDS

    verify_env = {**env, "MODERATOR_LOG__LEVEL": "error"}
    ok = subprocess.run(
        [*CLI, "audit", "verify"], env=verify_env, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout

    victim = "ev-04321"
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            "UPDATE audit_records SET record = replace(record, '\"pod-1\"', '\"pod-X\"') "
            "WHERE event_id = ?",
            (victim,),
        ).rowcount
    conn.close()
    assert changed == 1
    bad = subprocess.run(
        [*CLI, "audit", "verify"], env=verify_env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert victim in bad.stdout, bad.stdout
