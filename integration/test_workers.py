"""`moderator run --workers 2` on the embedded stack (mock broker, at-least-once): both workers
get partitions of the uploads topic, every upload gets exactly one verdict, each worker serves
its own endpoint, SIGTERM to the supervisor drains both and exits 0; a worker that dies makes
the supervisor stop the other and exit non-zero."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from PIL import Image

from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy

EVENTS = 40
TENANT = "acme"
DRAIN_GRACE_S = 5


class _Logs:
    """The supervisor's stderr (its own lines and its workers'), read on a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                continue

    def events(self, name: str) -> list[dict[str, Any]]:
        return [d for d in list(self.lines) if d.get("event") == name]

    def tail(self) -> str:
        return "".join(self.raw[-40:])

    def join(self) -> None:
        self._thread.join(10)
        self._stream.close()


def _free_ports(n: int) -> int:
    """A port p such that p..p+n-1 are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def _png(i: int) -> bytes:
    img = Image.new("RGB", (16, 16), (i % 251, (i * 7) % 253, (i * 13) % 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _create_topic(bootstrap: str, topic: str) -> int:
    """The mock cluster creates a topic a client asks about; its partition count."""
    producer = Producer({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        meta = producer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return len(meta.partitions)
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} was not created")


def _read_all(bootstrap: str, topic: str, until: int, timeout_s: float) -> list[dict[str, Any]]:
    """Records of `topic` (read_committed) until `until` distinct event ids, then 1 s more."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    parts = reader.list_topics(topic, timeout=10).topics[topic].partitions
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    settle: float | None = None
    try:
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            for m in reader.consume(500, 0.2):
                if m.error() is None and m.value():
                    out.append(json.loads(m.value()))
            if settle is None and len({d["verdict"]["event_id"] for d in out}) >= until:
                settle = time.monotonic() + 1.0  # late duplicates would show up here
    finally:
        reader.close()
    return out


@pytest.fixture
def workers_env(stack: EmbeddedStack, unique: str, tmp_path: Path) -> dict[str, Any]:
    bucket = stack.buckets[0]
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    (policies / f"{TENANT}.yaml").write_text("on_error: review\n", encoding="utf-8")
    topics = {role: f"{role}-{unique}" for role in ("uploads", "verdicts", "audit", "dlq")}
    for topic in topics.values():
        _create_topic(stack.bootstrap_servers, topic)
    port = _free_ports(2)
    env = {
        **os.environ,
        **stack.env(),
        **{f"MODERATOR_KAFKA__TOPICS__{role.upper()}": name for role, name in topics.items()},
        "MODERATOR_INSTANCE_ID": f"pod-{unique}",
        "MODERATOR_KAFKA__GROUP_ID": f"moderator-{unique}",
        "MODERATOR_KAFKA__COMMIT_INTERVAL_MS": "200",
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MODERATOR_TENANCY__UPLOAD_BUCKETS": json.dumps([bucket]),
        "MODERATOR_POLICIES__DIR": str(policies),
        "MODERATOR_ENGINE__KIND": "fake",
        "MODERATOR_FLOW__DRAIN_GRACE_S": str(DRAIN_GRACE_S),
        "MODERATOR_HTTP__PORT": str(port),
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_LOG__FORMAT": "json",
        "MODERATOR_LOG__LEVEL": "info",
    }
    return {"env": env, "topics": topics, "bucket": bucket, "port": port, "id": f"pod-{unique}"}


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], _Logs]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderator.cli.main", "run", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, _Logs(proc.stderr)


def _wait_for_both_assigned(proc: subprocess.Popen[str], logs: _Logs, ids: set[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # cooperative-sticky: the first worker to join takes every partition, then gives some
        # away to the second once it joins
        owners = {d.get("worker") for d in logs.events("assigned") if d.get("partitions")}
        if owners >= ids:
            return
        assert proc.poll() is None, logs.tail()
        time.sleep(0.2)
    raise AssertionError(f"both workers were not assigned partitions:\n{logs.tail()}")


def _stop(proc: subprocess.Popen[str], logs: _Logs) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(DRAIN_GRACE_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        logs.join()
    return code


def test_two_workers_share_the_group_and_drain_on_sigterm(
    stack: EmbeddedStack, workers_env: dict[str, Any]
) -> None:
    env, topics, ident = workers_env["env"], workers_env["topics"], workers_env["id"]
    ids = {f"{ident}-w0", f"{ident}-w1"}
    s3 = stack.s3_client()
    keys = [f"{TENANT}/{uuid.uuid4().hex[:6]}-{i}.png" for i in range(EVENTS)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=workers_env["bucket"], Key=key, Body=_png(i))
    s3.close()
    proc, logs = _start(env)
    try:
        _wait_for_both_assigned(proc, logs, ids)
        for k in (0, 1):  # each worker serves its own endpoint on http.port + k
            url = f"http://127.0.0.1:{workers_env['port'] + k}/healthz"
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert answer.status == 200
        producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
        for i, key in enumerate(keys):
            event = {
                "event_id": f"e{i}",
                "tenant_id": TENANT,
                "object": {"bucket": workers_env["bucket"], "key": key},
            }
            producer.produce(topics["uploads"], key=key.encode(), value=json.dumps(event).encode())
        assert producer.flush(10) == 0
        audits = _read_all(stack.bootstrap_servers, topics["audit"], EVENTS, 90)
    finally:
        code = _stop(proc, logs)

    assert code == 0, logs.tail()
    per_event = Counter(d["verdict"]["event_id"] for d in audits)
    assert set(per_event) == {f"e{i}" for i in range(EVENTS)}, logs.tail()
    assert set(per_event.values()) == {1}, [e for e, n in per_event.items() if n > 1]
    assert {d["verdict"]["error"] for d in audits} == {None}
    # both workers judged uploads, each under its own instance id
    assert {d["instance_id"] for d in audits} == ids
    drained = {d.get("worker") for d in logs.events("drained")}
    assert drained == ids, logs.tail()
    # lines written on other threads than the loop's (the engine's warm-up) name it too
    assert {d.get("worker") for d in logs.events("engine_warm")} == ids, logs.tail()
    stopped = {d["worker"]: d["code"] for d in logs.events("worker_stopped")}
    assert stopped == dict.fromkeys(ids, 0)


def test_a_worker_that_dies_stops_the_supervisor_non_zero(
    workers_env: dict[str, Any],
) -> None:
    ident = workers_env["id"]
    ids = {f"{ident}-w0", f"{ident}-w1"}
    proc, logs = _start(workers_env["env"])
    try:
        _wait_for_both_assigned(proc, logs, ids)
        pids = {d["worker"]: d["pid"] for d in logs.events("worker_started")}
        os.kill(pids[f"{ident}-w1"], signal.SIGKILL)
        code = proc.wait(DRAIN_GRACE_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        logs.join()
    assert code == 1, logs.tail()
    exited = logs.events("worker_exited")
    assert [(d["worker"], d["code"]) for d in exited] == [(f"{ident}-w1", -signal.SIGKILL)]
    # the other worker was asked to stop and drained
    assert {d.get("worker") for d in logs.events("drained")} == {f"{ident}-w0"}
    assert {d["worker"]: d["code"] for d in logs.events("worker_stopped")}[f"{ident}-w0"] == 0
