"""The audit sink on the embedded broker, into SQLite and PostgreSQL: every distinct record
stored once, junk skipped, offsets committed (a restarted sink stores nothing new), anchors
exported and verified. `moderator run --with-audit-sink` and `moderator demo` end to end."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from PIL import Image

from audit_sink_support import (
    Running,
    committed,
    end_offsets,
    event_ids,
    produce,
    records,
    sink_settings,
    wait_for,
)
from audit_support import BACKENDS, database_url
from moderator.audit.db.store import AuditStore
from moderator.audit.integrity.anchors import latest_anchor
from moderator.audit.integrity.verify import verify
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from topic_support import read_topic


@pytest.fixture(params=BACKENDS)
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(str(request.param), tmp_path) as url:
        yield url


def test_sink_stores_each_record_once_and_commits(
    stack: EmbeddedStack, unique: str, audit_url: str, tmp_path: Path
) -> None:
    n = 300
    values = records(n)
    duplicates = [values[i] for i in range(0, n, 15)]  # redelivered copies of 20 events
    junk = [b"{not json", b'{"schema": "moderator.audit/v1", "verdict": {}}']
    anchors = tmp_path / "anchors.jsonl"
    settings = sink_settings(
        stack, unique, audit_url, **{"audit.anchor_file": anchors, "audit.anchor_every_s": 0.2}
    )
    produce(stack.bootstrap_servers, settings.kafka.topics.audit, values + duplicates + junk)

    with AuditStore.open(audit_url) as store:
        running = Running(settings)
        wait_for(lambda: store.count() >= n, 60, lambda: (store.count(), running.error))
        wait_for(
            lambda: committed(settings) == end_offsets(settings),
            30,
            lambda: (committed(settings), end_offsets(settings)),
        )
        stats = running.finish()
        assert store.count() == n
        assert stats.inserted == n
        assert stats.duplicates == len(duplicates)
        assert stats.skipped == len(junk)
        assert stats.messages == n + len(duplicates) + len(junk)
        assert stats.retries == 0 and stats.commit_failures == 0

        assert event_ids(store) == {f"ev-{i:05d}" for i in range(n)}
        report = verify(store, latest_anchor(anchors))
        assert report.ok, report.problems
        assert report.rows_checked == n
        anchor = latest_anchor(anchors)
        assert anchor is not None and sum(h.seq for h in anchor.heads) == n

        restarted = Running(settings)  # same group: resumes at the committed offsets
        time.sleep(6)  # join the group (~3 s on the embedded broker) and poll for a while
        again = restarted.finish()
        assert again.messages == 0 and again.inserted == 0
        assert store.count() == n


def _png(i: int) -> bytes:
    img = Image.new("RGB", (16, 16), (i * 40 % 256, 90, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _publish_uploads(stack: EmbeddedStack, unique: str, n: int) -> str:
    """`n` uploads of distinct images for tenant acme; returns the uploads topic."""
    s3 = stack.s3_client()
    uploads = f"uploads-{unique}"
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for i in range(n):
        key = f"acme/{unique}/{i}.png"
        s3.put_object(Bucket="uploads", Key=key, Body=_png(i))
        event = {
            "event_id": f"{unique}-{i}",
            "tenant_id": "acme",
            "object": {"bucket": "uploads", "key": key},
        }
        producer.produce(uploads, value=json.dumps(event).encode())
    assert producer.flush(10) == 0
    return uploads


def _start_run_with_sink(
    stack: EmbeddedStack, unique: str, tmp_path: Path, uploads: str, **more_env: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`moderator run --with-audit-sink` on the fake engine; returns it, its store, its log."""
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    (policies / "acme.yaml").write_text("on_error: review\n")
    db = tmp_path / "audit.db"
    env = {
        **os.environ,
        **stack.env(),
        "MODERATOR_ENGINE__KIND": "fake",
        "MODERATOR_POLICIES__DIR": str(policies),
        "MODERATOR_KAFKA__GROUP_ID": f"g-{unique}",
        "MODERATOR_KAFKA__TOPICS__UPLOADS": uploads,
        "MODERATOR_KAFKA__TOPICS__VERDICTS": f"verdicts-{unique}",
        "MODERATOR_KAFKA__TOPICS__AUDIT": f"audit-{unique}",
        "MODERATOR_KAFKA__TOPICS__DLQ": f"dlq-{unique}",
        "MODERATOR_KAFKA__COMMIT_INTERVAL_MS": "100",
        "MODERATOR_AUDIT__URL": f"sqlite:///{db}",
        "MODERATOR_LOG__LEVEL": "info",
        **more_env,
    }
    logs = tmp_path / "run.log"
    with logs.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moderator.cli.main", "run", "--with-audit-sink"],
            env=env,
            stderr=log,
        )
    return proc, db, logs


def test_run_with_audit_sink_stores_the_verdicts_audit_trail(
    stack: EmbeddedStack, unique: str, tmp_path: Path
) -> None:
    """`moderator run --with-audit-sink`: uploads in, rows in the store, one process, exit 0."""
    n = 6
    uploads = _publish_uploads(stack, unique, n)
    proc, db, logs = _start_run_with_sink(stack, unique, tmp_path, uploads)
    try:
        with AuditStore.open(f"sqlite:///{db}") as store:
            wait_for(lambda: store.count() >= n, 90, lambda: logs.read_text()[-3000:])
            assert event_ids(store) == {f"{unique}-{i}" for i in range(n)}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, logs.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_run_with_audit_sink_stores_the_records_of_the_events_drained_on_sigterm(
    stack: EmbeddedStack, unique: str, tmp_path: Path
) -> None:
    """SIGTERM while events are in flight: the consumer drains them, and the sink stores
    their audit records before the process exits, not at its next start."""
    uploads = _publish_uploads(stack, unique, 300)
    # A slow engine (50 ms a batch of 8): most of the 300 are still in flight at the signal.
    slow = {"MODERATOR_ENGINE__FAKE__LATENCY_MS": "50"}
    proc, db, logs = _start_run_with_sink(stack, unique, tmp_path, uploads, **slow)
    try:
        with AuditStore.open(f"sqlite:///{db}") as store:
            # The signal comes half a second after the consumer got its partitions: a few
            # dozen events judged, most in flight (the sink may not even have its own yet).
            assigned = '"event": "assigned"'
            wait_for(lambda: assigned in logs.read_text(), 90, lambda: logs.read_text()[-3000:])
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            at_signal = store.count()
            assert proc.wait(90) == 0, logs.read_text()[-3000:]
            written = read_topic(stack.bootstrap_servers, f"audit-{unique}")
            assert len(written) > at_signal, "nothing was left to store at the signal"
            assert event_ids(store) == {json.loads(v)["verdict"]["event_id"] for v in written}
        assert "audit_sink_caught_up" in logs.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_demo_stores_its_audit_trail_and_prints_a_query(tmp_path: Path) -> None:
    """`moderator demo` writes the default store in the working directory; `audit query`
    answers from it there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    cli = [sys.executable, "-m", "moderator.cli.main"]
    demo = subprocess.run(
        [*cli, "demo", "--engine", "fake", "--events", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "6/6 verdicts" in demo.stdout
    assert "audit store sqlite:///moderator-audit.db: 6 records stored" in demo.stdout
    assert "moderator audit query --tenant acme" in demo.stdout
    assert (tmp_path / "moderator-audit.db").is_file()
    query = subprocess.run(
        [*cli, "audit", "query", "--tenant", "acme", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert query.returncode == 0, query.stderr
    rows = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
    assert rows and {row["tenant_id"] for row in rows} == {"acme"}
