"""`moderator run` (at-least-once) SIGKILLed five times during a 1,000-event run on the embedded
broker, served by a separate `moderator dev-stack` process: no event is lost, each restart resumes
from the committed offsets, and every duplicate is an identical re-decision."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from PIL import Image

from moderator.policy.bundled import write_default_policy

pytestmark = pytest.mark.slow

EVENTS = 1000
KILLS = 5
HIGH_IN_FLIGHT = 64
TENANTS = ("acme", "kids", "news")


@pytest.fixture(scope="module")
def dev_stack() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderator.cli.main", "dev-stack"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        name, _, value = line.removeprefix("export ").strip().partition("=")
        env[name] = value.strip("'")
        assert time.monotonic() < deadline, "dev-stack did not become ready"
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        proc.stdout.close()
        assert code == 0


def _png(i: int) -> bytes:
    img = Image.new("RGB", (24, 24), (i % 251, (i * 7) % 253, (i * 13) % 255))
    img.putpixel((i % 24, (i // 24) % 24), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _verdicts(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Everything on `topic`, read by partition assignment (no group join to wait for)."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    parts = reader.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[dict[str, Any]] = []
    done = {p for p, end in ends.items() if end <= 0}
    deadline = time.monotonic() + 60
    try:
        while len(done) < len(parts) and time.monotonic() < deadline:
            for m in reader.consume(1000, 0.25):
                if m.error() is not None:
                    continue
                out.append(json.loads(m.value()))
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
    finally:
        reader.close()
    return out


def test_sigkill_five_times_loses_nothing(dev_stack: dict[str, str], tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex[:8]
    bootstrap = dev_stack["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"]
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    for name in TENANTS:
        (policies / f"{name}.yaml").write_text("on_error: review\n")
    s3 = boto3.client(
        "s3",
        endpoint_url=dev_stack["MODERATOR_S3__ENDPOINT_URL"],
        region_name=dev_stack["AWS_DEFAULT_REGION"],
        aws_access_key_id=dev_stack["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=dev_stack["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [f"{TENANTS[i % 3]}/{run_id}/{i}.png" for i in range(EVENTS)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(Bucket="uploads", Key=keys[i], Body=_png(i)), range(EVENTS)
            )
        )
    uploads, verdicts = f"uploads-{run_id}", f"verdicts-{run_id}"
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, key in enumerate(keys):
        event = {
            "event_id": f"e{i}",
            "tenant_id": key.split("/")[0],
            "object": {"bucket": "uploads", "key": key},
        }
        producer.produce(uploads, value=json.dumps(event).encode())
    producer.flush(30)

    env = {
        **os.environ,
        **dev_stack,
        "MODERATOR_ENGINE__KIND": "fake",
        "MODERATOR_ENGINE__FAKE__LATENCY_MS": "40",
        "MODERATOR_ENGINE__BATCH_SIZE": "1",
        "MODERATOR_KAFKA__GROUP_ID": f"moderator-{run_id}",
        "MODERATOR_KAFKA__TOPICS__UPLOADS": uploads,
        "MODERATOR_KAFKA__TOPICS__VERDICTS": verdicts,
        "MODERATOR_KAFKA__TOPICS__AUDIT": f"audit-{run_id}",
        "MODERATOR_KAFKA__TOPICS__DLQ": f"dlq-{run_id}",
        "MODERATOR_KAFKA__COMMIT_INTERVAL_MS": "200",
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MODERATOR_FLOW__HIGH_IN_FLIGHT": str(HIGH_IN_FLIGHT),
        "MODERATOR_FLOW__LOW_IN_FLIGHT": str(HIGH_IN_FLIGHT // 2),
        "MODERATOR_POLICIES__DIR": str(policies),
        "MODERATOR_LOG__LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "moderator.cli.main", "run"]
    rng = random.Random(11)
    seen_before_kill: list[int] = []
    logs = tmp_path / "run.log"
    for _ in range(KILLS):
        with logs.open("ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        before = seen_before_kill[-1] if seen_before_kill else 0
        deadline = time.monotonic() + 90
        while len(_verdicts(bootstrap, verdicts)) <= before:  # this run is making progress
            assert proc.poll() is None, logs.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                seen_before_kill,
                len(_verdicts(bootstrap, verdicts)),
            )
        time.sleep(rng.uniform(0.0, 1.5))  # then kill it at a random moment
        proc.kill()
        proc.wait(10)
        seen_before_kill.append(len(_verdicts(bootstrap, verdicts)))
    # The last run is never killed: it works off the rest (about 870 events) with batches of
    # 16, as fast as the fake engine allows; the decisions do not depend on the batch size.
    fast = {**env, "MODERATOR_ENGINE__BATCH_SIZE": "16"}
    with logs.open("ab") as log:
        final = subprocess.Popen(cmd, env=fast, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 240
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = _verdicts(bootstrap, verdicts)
        if len({d["event_id"] for d in docs}) >= EVENTS:
            break
        assert final.poll() is None, logs.read_text()[-3000:]
    final.send_signal(signal.SIGTERM)
    assert final.wait(30) == 0

    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        by_event[d["event_id"]].append(d)
    assert set(by_event) == {f"e{i}" for i in range(EVENTS)}, logs.read_text()[-3000:]
    duplicates = len(docs) - EVENTS
    print(
        f"\nverdicts seen after each kill: {seen_before_kill}; "
        f"duplicates: {duplicates} over {KILLS} kills "
        f"(bound: {HIGH_IN_FLIGHT} in-flight window per kill)"
    )
    assert 0 < seen_before_kill[-1] < EVENTS, "the kills did not land mid-run"
    assert duplicates <= KILLS * HIGH_IN_FLIGHT, "a restart did not resume from committed offsets"
    for copies in by_event.values():
        first = copies[0]
        for other in copies[1:]:
            for field in ("decision", "policy"):
                assert other[field] == first[field]
            assert (other["assessment"] or {}).get("rating") == (first["assessment"] or {}).get(
                "rating"
            )
            assert (other["assessment"] or {}).get("category") == (first["assessment"] or {}).get(
                "category"
            )
            assert (other["error"] or {}).get("code") == (first["error"] or {}).get("code")
