"""`run_service` on the embedded stack with its endpoint: `/readyz` is 503 while the engine warms
up and 200 after; `/metrics` scraped during the run shows the key series move."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from moderator.service import run_service
from moderator.settings import load_settings

BUCKET = "uploads"
WARM_UP_MS = 1500  # the fake engine's latency: each engine call, the warm-up's too


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_readyz_waits_for_the_engine_and_metrics_move(
    stack: EmbeddedStack, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in stack.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    (policies / "acme.yaml").write_text("on_error: review\n")
    uploads = f"uploads-{unique}"
    port = _free_port()
    settings = load_settings(
        overrides={
            "engine.kind": "fake",
            "engine.fake.latency_ms": WARM_UP_MS,
            "engine.batch_size": 16,
            "engine.max_wait_ms": 100,
            "kafka.bootstrap_servers": stack.bootstrap_servers,
            "kafka.delivery": "at_least_once",
            "kafka.group_id": f"obs-{unique}",
            "kafka.commit_interval_ms": 200,
            "kafka.topics.uploads": uploads,
            **{f"kafka.topics.{t}": f"{t}-{unique}" for t in ("verdicts", "audit", "dlq")},
            "s3.endpoint_url": stack.s3_endpoint_url,
            "s3.region": "us-east-1",
            "policies.dir": policies,
            "http.host": "127.0.0.1",
            "http.port": port,
            "log.level": "warning",
        }
    )
    s3 = stack.s3_client()
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})

    def upload(i: int) -> None:
        key = f"acme/{unique}/img-{i}.png"
        s3.put_object(Bucket=BUCKET, Key=key, Body=make_sample("png", i, size=(48, 48)).data)
        event: dict[str, Any] = {
            "event_id": f"ev-{i}",
            "tenant_id": "acme",
            "object": {"bucket": BUCKET, "key": key},
        }
        producer.produce(uploads, value=json.dumps(event).encode())

    for i in range(3):  # creates the topic; judged once the service runs
        upload(i)
    producer.flush(30)

    stop = threading.Event()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            run_service(settings, stop)
        except BaseException as exc:
            failures.append(exc)

    service = threading.Thread(target=serve, name="service", daemon=True)
    started = time.monotonic()
    service.start()
    try:
        _until(lambda: _get(port, "/healthz") == (200, "ok\n"), 30, "/healthz")
        status, body = _get(port, "/readyz")
        assert status == 503, body
        assert json.loads(body)["checks"]["engine"]["ok"] is False
        _until(lambda: _get(port, "/readyz")[0] == 200, 30, "/readyz 200")
        assert time.monotonic() - started >= WARM_UP_MS / 1000  # not before an engine answer
        ready = json.loads(_get(port, "/readyz")[1])
        assert set(ready["checks"]) == {"broker", "checkpoints", "engine", "policies", "s3"}
        assert ready["checks"]["s3"] == {"ok": True, "detail": "no read failing"}
        assert _metrics(port)[("moderator_engine_ready", ())] == 1
        assert _metrics(port)[("moderator_object_store_ready", ())] == 1

        def judged() -> float:
            found = _metrics(port)
            return sum(
                found.get(("moderator_events_total", (("outcome", o),)), 0.0)
                for o in ("verdict", "error_verdict")
            )

        _until(lambda: judged() == 3, 60, "the first three verdicts")
        before = _metrics(port)
        for i in range(3, 8):
            upload(i)
        producer.flush(30)
        _until(lambda: judged() == 8, 60, "all eight verdicts")
        _until(
            lambda: _metrics(port).get(("moderator_upload_to_verdict_seconds_count", ()), 0) == 8,
            30,
            "every verdict committed",
        )
        after = _metrics(port)

        def lag() -> dict[str, float]:
            return {
                dict(labels)["partition"]: v
                for (name, labels), v in _metrics(port).items()
                if name == "moderator_consumer_lag" and dict(labels)["topic"] == uploads
            }

        # every message is committed: the lag read from the fetched ends comes down to 0
        _until(lambda: bool(lag()) and set(lag().values()) == {0.0}, 20, "lag of 0")
    finally:
        stop.set()
        service.join(30)
        producer.flush(5)
    assert not failures, failures
    assert not service.is_alive()

    def moved(name: str, *labels: tuple[str, str]) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("moderator_engine_batch_size_sum") == 5
    commits = moved("moderator_transactions_total", ("result", "commit"))
    assert commits >= 1
    aborts = moved("moderator_transactions_total", ("result", "abort"))
    publish = ("stage", "publish")  # one publish stage per checkpoint, aborted or not
    assert moved("moderator_stage_latency_seconds_count", publish) == commits + aborts
    assert ("moderator_inflight", ()) in after and ("moderator_paused", ()) in after
    assert 0 <= after[("moderator_engine_busy_ratio", ())] <= 1
    assert any(k[0] == "moderator_policy_info" and v == 1 for k, v in after.items())
    _, body = _get(port, "/healthz")
    assert body == ""  # the endpoint closed with the service
