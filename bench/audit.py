"""The audit store: sink write rate into SQLite and PostgreSQL, and query latency at scale.

In one run, per backend: load `--rows` audit records through `AuditStore.insert` in batches of
`--batch` (the sink's database step: idempotency check, hash chain, policy versions, one
transaction per batch), then time an object-key lookup and a tenant + time-range page (and the
page after it, by cursor). With `--sink N`, also N records through the real `AuditSink` from the
embedded broker into SQLite (Kafka consume + insert + offset commit), end to end.

    python bench/audit.py [--rows 1000000] [--backends sqlite,postgresql] [--sink 20000]

PostgreSQL: `--pg-admin-url` names a server where the database `moderator_bench` may be dropped
and created (default: the local trust-auth server).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditQuery, IncomingRecord

TENANTS = [f"tenant-{i:02d}" for i in range(20)]
START = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=3)  # 1M rows span ~35 days
CATEGORIES = ["NA: None applying", "O4: Nudity Content", "O2: Violence, Harm, or Cruelty"]
TOPIC = "moderation.audit"


def _policy(tenant: str) -> tuple[dict[str, Any], str]:
    doc = {
        "schema": "bench-policy/v1",
        "tenant_id": tenant,
        "prompt": f"Judge the image against {tenant}'s policy. " * 40,
        "decision_table": {"O4": "block", "O2": "review"},
        "buckets": ["uploads"],
        "prefixes": [f"{tenant}/"],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return doc, hashlib.sha256(text.encode()).hexdigest()


POLICIES = {t: _policy(t) for t in TENANTS}


def key_of(i: int) -> str:
    return f"{TENANTS[i % len(TENANTS)]}/2026/{i // 1000:05d}/img-{i}.jpg"


def make_record(i: int, *, with_document: bool) -> dict[str, Any]:
    tenant = TENANTS[i % len(TENANTS)]
    rng = random.Random(i)
    category = rng.choice(CATEGORIES)
    unsafe = not category.startswith("NA")
    decided = START + STEP * i
    doc, policy_hash = POLICIES[tenant]
    verdict = {
        "schema": "moderator.verdict/v1",
        "event_id": f"ev-{i}",
        "tenant_id": tenant,
        "object": {
            "bucket": "uploads",
            "key": key_of(i),
            "version_id": None,
            "etag": None,
            "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "format": "JPEG",
            "width": 640,
            "height": 480,
        },
        "decision": "block" if unsafe else "allow",
        "assessment": {
            "rating": "Unsafe" if unsafe else "Safe",
            "category": category,
            "rationale": "A benchmark rationale describing the image in a sentence or two.",
            "score": round(rng.random(), 4),
        },
        "policy": {"tenant_id": tenant, "surface": "default", "version": policy_hash[:16]},
        "model": {
            "engine": "fake",
            "name": "fake",
            "revision": None,
            "categories": ["O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9"],
            "smoke_test": True,
        },
        "source": "model",
        "error": None,
        "timings_ms": {"fetch": 3.0, "queue": 1.0, "infer": 20.0, "total": 25.0},
        "decided_at": decided.isoformat().replace("+00:00", "Z"),
        "trace_id": f"{i:032x}",
    }
    return {
        "schema": "moderator.audit/v1",
        "verdict": verdict,
        "uploaded_at": (decided - timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "context": {"surface": "default", "user_id": f"u-{i % 5000}"},
        "input": {"topic": "uploads", "partition": i % 4, "offset": i // 4, "timestamp_ms": None},
        "instance_id": "bench",
        "package_version": "0.1.0",
        "policy_hash": policy_hash,
        "prompt_sha256": None,
        "policy_document": doc if with_document else None,
        "generation": {"temperature": 0.0, "max_new_tokens": 512},
        "raw_output": '{"rating": "Safe", "category": "NA: None applying", "rationale": "..."}',
        "attempts": 1,
    }


def incoming(start: int, stop: int) -> list[IncomingRecord]:
    return [
        IncomingRecord(TOPIC, i % 4, i // 4, make_record(i, with_document=i < len(TENANTS)))
        for i in range(start, stop)
    ]


def load(store: AuditStore, rows: int, batch: int) -> float:
    """Insert `rows` records; rows/s. Progress every ~10%."""
    started = time.perf_counter()
    step = max(rows // 10, batch)
    for first in range(0, rows, batch):
        store.insert(incoming(first, min(first + batch, rows)))
        if (first + batch) % step < batch:
            done = min(first + batch, rows)
            rate = done / (time.perf_counter() - started)
            print(f"  loaded {done:>9,} rows, {rate:,.0f} rows/s", flush=True)
    return rows / (time.perf_counter() - started)


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * len(samples)))]


def queries(store: AuditStore, rows: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(3)
    keys = iter([key_of(rng.randrange(rows)) for _ in range(400)])
    windows: Iterator[tuple[str, datetime]] = iter(
        [(rng.choice(TENANTS), START + STEP * rng.randrange(rows)) for _ in range(400)]
    )

    def by_key() -> None:
        page = store.query(AuditQuery(object_key=next(keys), limit=10))
        assert len(page.rows) == 1

    cursors: list[str] = []

    def tenant_page() -> None:
        tenant, since = next(windows)
        q = AuditQuery(
            tenant=tenant, since=since, until=since + timedelta(days=2), sort="decided_at"
        )
        page = store.query(q)
        if page.next_cursor:
            cursors.append(page.next_cursor)

    def next_page() -> None:
        tenant, _ = next(windows)
        store.query(AuditQuery(tenant=tenant, sort="decided_at", limit=100))

    return {
        "object-key lookup": timed(by_key, 200),
        "tenant + 2-day range, first 100": timed(tenant_page, 200),
        "tenant, oldest 100": timed(next_page, 100),
    }


def fresh_postgres(admin_url: str, *, reuse: bool) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = 'moderator_bench'")
        ).first()
        if not (reuse and exists):
            conn.execute(text("DROP DATABASE IF EXISTS moderator_bench"))
            conn.execute(text("CREATE DATABASE moderator_bench"))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/moderator_bench"


def sink_rate(n: int, tmp: Path) -> float:
    """N records through the real AuditSink from the embedded broker into SQLite; rows/s."""
    from confluent_kafka import Producer

    from moderator.audit.sink.loop import AuditSink
    from moderator.dev.stack import EmbeddedStack
    from moderator.ingest.kafka import make_consumer
    from moderator.settings import load_settings

    with EmbeddedStack() as stack:
        settings = load_settings(
            overrides={
                "kafka.bootstrap_servers": stack.bootstrap_servers,
                "kafka.delivery": "at_least_once",
                "kafka.topics.audit": "bench-audit",
                "kafka.group_id": "bench",
                "audit.url": f"sqlite:///{tmp / 'sink.db'}",
                "log.level": "warning",
            }
        )
        # Compressed like the service's producer: the embedded broker keeps only ~5 MiB per
        # partition and drops older records beyond that.
        producer = Producer(
            {
                "bootstrap.servers": stack.bootstrap_servers,
                "linger.ms": 20,
                "compression.type": "lz4",
            }
        )
        for item in incoming(0, n):
            producer.produce("bench-audit", json.dumps(item.record).encode())
            producer.poll(0)
        producer.flush(60)
        store = AuditStore.open(settings.audit.url)
        consumer = make_consumer(settings)
        sink = AuditSink(settings, store, consumer)
        stop = threading.Event()
        worker = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        worker.start()
        deadline = time.perf_counter() + 600
        while store.count() == 0 and time.perf_counter() < deadline:
            time.sleep(0.05)
        started, first = time.perf_counter(), store.count()
        while store.count() < n and time.perf_counter() < deadline:
            time.sleep(0.1)
        if store.count() < n:
            raise SystemExit(f"the sink stored {store.count()} of {n} records within 600 s")
        elapsed = time.perf_counter() - started
        stop.set()
        worker.join(60)
        store.close()
        return (n - first) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sink", type=int, default=0, help="records through the real sink")
    parser.add_argument(
        "--reuse-postgres",
        action="store_true",
        help="keep a moderator_bench database that already holds --rows rows (queries only)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {}
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'audit.db'}"
            else:
                url = fresh_postgres(args.pg_admin_url, reuse=args.reuse_postgres)
            print(f"{backend}: loading {args.rows:,} rows in batches of {args.batch}", flush=True)
            store = AuditStore.open(url)
            try:
                if store.count() >= args.rows:
                    print("  already loaded: queries only", flush=True)
                    rate = float("nan")
                else:
                    rate = load(store, args.rows, args.batch)
                results[backend] = (rate, queries(store, args.rows))
            finally:
                store.close()
        print(f"\nrows={args.rows:,} batch={args.batch}")
        print(f"{'backend':<11} {'insert rows/s':>13}  query: p50 / p95 ms")
        for backend, (rate, lat) in results.items():
            parts = "; ".join(f"{name} {p50:.1f} / {p95:.1f}" for name, (p50, p95) in lat.items())
            print(f"{backend:<11} {rate:>13,.0f}  {parts}")
        if len(results) == 2:
            (a, ra), (b, rb) = ((k, v[0]) for k, v in results.items())
            print(f"insert rate {a} ÷ {b}: {ra / rb:.2f}x")
        if args.sink:
            rate = sink_rate(args.sink, Path(tmp))
            print(f"sink end to end (embedded broker → SQLite), {args.sink:,} records:")
            print(f"  {rate:,.0f} rows/s from the first stored row (consumer-group join excluded)")


if __name__ == "__main__":
    main()
