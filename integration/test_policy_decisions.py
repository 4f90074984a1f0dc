"""Tenant policies end to end on the embedded stack: one engine answer, different decisions.

A test-double engine gives every image the same assessment (Unsafe, O4 nudity, score 0.7). The
same image bytes are uploaded for several tenants whose policies treat nudity differently, and
each verdict must carry the decision and the policy version that `moderator policy validate`
(and the registry) report for its tenant and surface.
"""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from PIL import Image

from moderator.dev.stack import EmbeddedStack
from moderator.engine.base import EngineRequest, EngineResult
from moderator.events.verdict import CATEGORIES, Assessment, ModelInfo, category_code
from moderator.policy.bundled import write_default_policy
from moderator.policy.registry import PolicyRegistry
from moderator.service import build_pipeline
from moderator.settings import load_settings
from service_support import ServiceThread

BUCKET = "uploads"
SCORE = 0.7
ASSESSMENT = Assessment(
    rating="Unsafe",
    category="O4: Nudity Content",
    rationale="Test double: the same answer for every image.",
    score=SCORE,
)

# Each tenant file, and the decision it must give the fixed O4 answer with score 0.7.
TENANT_FILES = {
    # allowed state; the action must be spelled out, since default.yaml sets `block` (capped
    # to `review` in allowed state)
    "art": "categories:\n  O4: {mode: allowed, action: allow}\n",
    # sensitive, blocking from 0.5; on profile photos only from 0.9, with review from 0.6
    "strict": (
        "categories:\n"
        "  O4: {mode: sensitive, block_at: 0.5}\n"
        "surfaces:\n"
        "  profile_photo:\n"
        "    categories:\n"
        "      O4: {block_at: 0.9, review_at: 0.6}\n"
    ),
    # no thresholds: the rating and the action decide
    "newsy": "categories:\n  O4: {action: review}\n",
}

# (event id, tenant, context.surface or None, expected decision, expected error code or None)
CASES: tuple[tuple[str, str, str | None, str, str | None], ...] = (
    ("ev-art", "art", None, "allow", None),
    ("ev-strict", "strict", None, "block", None),
    ("ev-strict-photo", "strict", "profile_photo", "review", None),
    ("ev-newsy", "newsy", None, "review", None),
    ("ev-ghost", "ghost", None, "review", "unknown_tenant"),  # no ghost.yaml: default on_error
)


class FixedAssessmentEngine:
    """Test double for the Engine protocol: the same assessment for every request.

    Records the prompts it was asked with, to check each tenant's compiled prompt reached it.
    """

    def __init__(self, assessment: Assessment) -> None:
        self._assessment = assessment
        self._lock = threading.Lock()
        self.prompts: list[str] = []
        self._info = ModelInfo(
            engine="fixed",
            name="fixed-assessment",
            categories=tuple(category_code(c) for c in CATEGORIES[:-1]),
            smoke_test=True,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return 448

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        with self._lock:
            self.prompts.extend(r.prompt for r in batch)
        raw = json.dumps({"rating": self._assessment.rating, "category": self._assessment.category})
        return [EngineResult(assessment=self._assessment, raw_output=raw) for _ in batch]

    def close(self) -> None:
        pass


def _png() -> bytes:
    img = Image.new("RGB", (40, 30), (200, 150, 120))
    img.putpixel((3, 4), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _read(bootstrap: str, topic: str, want: set[str], timeout: float) -> list[dict[str, Any]]:
    """Records of `topic` (4 partitions) until every event id in `want` has one."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(4)])
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not want <= seen:
            for m in reader.consume(100, 0.2):
                value = m.value()
                if m.error() is None and value is not None:
                    doc = json.loads(value)
                    out.append(doc)
                    seen.add(doc.get("event_id") or doc["verdict"]["event_id"])
    finally:
        reader.close()
    return out


def _validate(policies: Path) -> dict[tuple[str, str], str]:
    """`moderator policy validate DIR`: (tenant, surface) -> version."""
    done = subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "policy", "validate", str(policies)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    versions = {}
    for line in done.stdout.splitlines():
        tenant, surface, version = line.split()
        versions[(tenant, surface)] = version
    return versions


def test_one_assessment_different_decisions_per_tenant_and_surface(
    stack: EmbeddedStack, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in stack.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    policies = tmp_path / "policies"
    write_default_policy(policies)
    for tenant, text in TENANT_FILES.items():
        (policies / f"{tenant}.yaml").write_text(text)

    versions = _validate(policies)
    assert set(versions) == {
        ("default", "default"),
        ("art", "default"),
        ("strict", "default"),
        ("strict", "profile_photo"),
        ("newsy", "default"),
    }
    registry = PolicyRegistry(policies, load_settings().tenancy)
    compiled = {}
    for pair, version in versions.items():
        policy = registry.resolve(*pair)
        assert policy is not None
        assert policy.version == version  # the CLI and the registry agree
        compiled[pair] = policy
    tenant_versions = [versions[(t, "default")] for t in TENANT_FILES]
    assert len(set(tenant_versions)) == len(tenant_versions)
    assert versions[("strict", "profile_photo")] != versions[("strict", "default")]

    topics = {t: f"{t}-{unique}" for t in ("uploads", "verdicts", "audit", "dlq")}
    settings = load_settings(
        overrides={
            "engine.kind": "fake",  # replaced by the test double below; sizes the window
            "engine.batch_size": 2,
            "engine.max_wait_ms": 20,
            "kafka.bootstrap_servers": stack.bootstrap_servers,
            "kafka.delivery": "at_least_once",
            "kafka.group_id": f"policy-{unique}",
            "kafka.commit_interval_ms": 200,
            **{f"kafka.topics.{k}": v for k, v in topics.items()},
            "s3.endpoint_url": stack.s3_endpoint_url,
            "s3.region": stack.region,
            "policies.dir": policies,
            "policies.poll_interval_s": 0,
            "log.level": "warning",
        }
    )

    data = _png()
    s3 = stack.s3_client()
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for event_id, tenant, surface, _, _ in CASES:
        key = f"{tenant}/{unique}/{event_id}.png"
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)  # the same bytes for every tenant
        event: dict[str, Any] = {
            "event_id": event_id,
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
        }
        if surface is not None:
            event["context"] = {"surface": surface}
        producer.produce(topics["uploads"], value=json.dumps(event).encode())
    producer.flush(30)
    del producer

    engine = FixedAssessmentEngine(ASSESSMENT)
    want = {case[0] for case in CASES}
    with ServiceThread(settings, build_pipeline(settings, engine=engine), join_s=30) as service:
        verdicts = _read(stack.bootstrap_servers, topics["verdicts"], want, 60)
        audits = _read(stack.bootstrap_servers, topics["audit"], want, 30)
    assert service.stopped, "the service did not stop"
    assert not service.errors, service.errors
    gc.collect()  # finished Kafka clients go before the shared broker does (no reconnect noise)

    by_id = {v["event_id"]: v for v in verdicts}
    assert set(by_id) == want, sorted(by_id)
    audit_by_id = {a["verdict"]["event_id"]: a for a in audits}
    judged = []
    for event_id, tenant, surface, decision, error in CASES:
        verdict = by_id[event_id]
        assert verdict["tenant_id"] == tenant
        assert verdict["decision"] == decision, (event_id, verdict)
        if error is not None:
            continue
        assert verdict["error"] is None, verdict["error"]
        in_force = compiled[(tenant, surface or "default")]
        assert verdict["policy"] == {
            "tenant_id": tenant,
            "surface": surface or "default",
            "version": in_force.version,
        }
        assert verdict["model"]["engine"] == "fixed"
        assert in_force.decide(ASSESSMENT) == decision  # the registry's rules say the same
        audit = audit_by_id[event_id]
        assert audit["prompt_sha256"] == in_force.prompt_sha256
        assert audit["policy_hash"] == in_force.full_hash
        judged.append(verdict)

    # one engine answer for all: the assessments are identical, only the decisions differ
    assert [v["assessment"] for v in judged] == [ASSESSMENT.model_dump(mode="json")] * len(judged)
    assert {v["decision"] for v in judged} == {"allow", "review", "block"}
    assert len({v["object"]["sha256"] for v in judged}) == 1  # and so are the images
    # the surface override is its own version, with its own decision
    photo, plain = by_id["ev-strict-photo"], by_id["ev-strict"]
    assert photo["policy"]["version"] != plain["policy"]["version"]
    assert (plain["decision"], photo["decision"]) == ("block", "review")
    # each distinct prompt reached the engine once: the judgement key is the image, the prompt
    # and the model, so a surface whose override keeps the prompt shares the answer
    assert sorted(engine.prompts) == sorted(
        {compiled[(t, s or "default")].prompt for _, t, s, _, err in CASES if err is None}
    )
    assert {v["source"] for v in judged} <= {"model", "cache"}

    # a tenant without a file: unknown_tenant, decided by the default policy's on_error
    ghost = by_id["ev-ghost"]
    default = compiled[("default", "default")]
    assert ghost["error"]["code"] == "unknown_tenant"
    assert ghost["assessment"] is None and ghost["model"] is None
    assert ghost["policy"]["version"] == default.version == versions[("default", "default")]
    assert ghost["decision"] == default.resolved.on_error["default"] == "review"
