"""The pipeline end to end on the embedded stack with the guard-model engines on a tiny checkpoint:
`transformers` in-process, and `openai` against the project's OpenAI-compatible test server
answering from the same tiny model."""

from __future__ import annotations

import gc
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.dev.tiny.checkpoint import make_tiny
from moderator.policy.bundled import write_default_policy
from moderator.service import build_pipeline
from moderator.settings import EngineSettings, load_settings
from service_support import ServiceThread

pytestmark = pytest.mark.transformers

BUCKET = "uploads"
TENANTS = ("acme", "kids")
GENERATION = {
    "engine.generation.max_new_tokens": 80,
    "engine.generation.rationale_max_chars": 48,
}


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedStack]:
    with EmbeddedStack(buckets=(BUCKET,)) as stack:
        yield stack
        gc.collect()  # finished Kafka clients go before the broker does (no reconnect noise)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="needs the transformers extra")
    pytest.importorskip("xgrammar", reason="needs the transformers extra")
    return make_tiny(tmp_path_factory.mktemp("guard") / "ov", "llava-onevision")


def _read(bootstrap: str, topic: str, want: int, timeout: float) -> list[dict[str, Any]]:
    """Everything on `topic` (4 partitions, read_committed), once `want` records are there."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(4)])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < want:
            out.extend(json.loads(m.value()) for m in reader.consume(100, 0.2) if m.error() is None)
    finally:
        reader.close()
    return out


def _moderate(
    embedded: EmbeddedStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: dict[str, Any],
    n: int = 10,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Upload `n` images for two tenants, run the service, return (verdicts, audit records)."""
    for name, value in embedded.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    for name in TENANTS:
        (policies / f"{name}.yaml").write_text("on_error: review\n")
    run = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{run}" for t in ("uploads", "verdicts", "audit", "dlq")}
    settings = load_settings(
        overrides={
            **engine,
            **GENERATION,
            "engine.batch_size": 4,
            "engine.max_wait_ms": 50,
            "kafka.bootstrap_servers": embedded.bootstrap_servers,
            "kafka.delivery": "at_least_once",
            "kafka.group_id": f"guard-{run}",
            "kafka.commit_interval_ms": 200,
            **{f"kafka.topics.{k}": v for k, v in topics.items()},
            "s3.endpoint_url": embedded.s3_endpoint_url,
            "s3.region": "us-east-1",
            "policies.dir": policies,
            "log.level": "warning",
        }
    )
    s3 = embedded.s3_client()
    producer = Producer({"bootstrap.servers": embedded.bootstrap_servers})
    for i in range(n):
        tenant = TENANTS[i % 2]
        key = f"{tenant}/{run}/img-{i}"
        kind = ("jpeg", "png", "gif", "webp")[i % 4]
        s3.put_object(Bucket=BUCKET, Key=key, Body=make_sample(kind, i, size=(80, 60)).data)
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
        }
        producer.produce(topics["uploads"], value=json.dumps(event).encode())
    producer.flush(30)
    del producer  # its background threads would outlive the stack otherwise

    with ServiceThread(settings, build_pipeline(settings)) as service:
        verdicts = _read(embedded.bootstrap_servers, topics["verdicts"], n, 180)
        audits = _read(embedded.bootstrap_servers, topics["audit"], n, 30)
    assert not service.errors
    return verdicts, audits


def _check(
    verdicts: list[dict[str, Any]], audits: list[dict[str, Any]], engine: str, n: int
) -> None:
    assert sorted(v["event_id"] for v in verdicts) == sorted(f"ev-{i}" for i in range(n))
    for verdict in verdicts:
        assert verdict["error"] is None, verdict["error"]
        assessment = verdict["assessment"]
        assert assessment["rating"] in ("Safe", "Unsafe")
        assert assessment["category"].split(":")[0] in {f"O{i}" for i in range(1, 10)} | {"NA"}
        assert verdict["model"]["engine"] == engine
        assert verdict["model"]["smoke_test"] is True
        assert verdict["model"]["categories"] == [f"O{i}" for i in range(1, 10)]
    for audit in audits:
        assert audit["raw_output"].startswith('{"rating": ')
        assert audit["generation"]["temperature"] == 0.0
        assert audit["generation"]["max_new_tokens"] == 80


def test_transformers_engine_end_to_end(
    embedded: EmbeddedStack, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = {
        "engine.kind": "transformers",
        "engine.model": str(tiny),
        "engine.transformers.threads": 1,
    }
    verdicts, audits = _moderate(embedded, tmp_path, monkeypatch, engine)
    _check(verdicts, audits, "transformers", 10)
    for verdict in verdicts:
        score = verdict["assessment"]["score"]
        assert score is not None and 0.0 <= score <= 1.0
    assert {a["generation"]["engine"] for a in audits} == {"transformers"}


def test_openai_engine_against_the_test_server(
    embedded: EmbeddedStack, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.dev.openai.hf_backend import TransformersBackend
    from moderator.dev.openai.server import OpenAITestServer
    from moderator.engine.transformers.engine import TransformersEngine

    model = TransformersEngine(
        EngineSettings.model_validate(
            {
                "kind": "transformers",
                "model": str(tiny),
                "transformers": {"threads": 1, "warmup": False},
            }
        )
    )
    with OpenAITestServer(TransformersBackend(model), model="tiny-guard") as server:
        engine = {
            "engine.kind": "openai",
            "engine.base_url": server.url,
            "engine.model": "tiny-guard",
            "engine.openai.top_logprobs": 20,
        }
        verdicts, audits = _moderate(embedded, tmp_path, monkeypatch, engine)
        bodies = server.requests
    _check(verdicts, audits, "openai", 10)
    for verdict in verdicts:
        score = verdict["assessment"]["score"]
        assert score is None or 0.0 <= score <= 1.0
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    assert all(b["logprobs"] is True and b["top_logprobs"] == 20 for b in bodies)
    assert all(b["messages"][0]["content"][0]["type"] == "image_url" for b in bodies)
