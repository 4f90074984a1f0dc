"""Hand-made AuditRecord v1 documents for two tenants, stored through the audit store's insert
API (shared by the audit API and audit CLI tests)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord

TOPIC = "moderation.audit"
SINK_TOPIC = "audit-t"  # what the audit sink reads in its tests (the `broker` fixture's)
BASE = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
ALPHA, BETA = "alpha", "beta"


@dataclass(frozen=True)
class Policy:
    document: dict[str, Any]

    @property
    def hash(self) -> str:
        text = json.dumps(self.document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def version(self) -> str:
        return self.hash[:16]


def policy(tenant: str) -> Policy:
    return Policy(
        {
            "schema": "test-policy/v1",
            "tenant_id": tenant,
            "prompt": f"Judge this image for {tenant}.",
            "decision_table": [{"category": "O4", "action": "block"}],
            "buckets": ["uploads"],
            "prefixes": [f"{tenant}/"],
        }
    )


def record(
    event_id: str,
    tenant: str,
    decided_at: datetime,
    *,
    decision: str = "allow",
    category: str | None = "NA: None applying",
    score: float | None = 0.1,
    engine: str = "fake",
    model_name: str = "org/fake-guard",
    error: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """One AuditRecord v1 as the sink reads it from the audit topic."""
    pol = policy(tenant)
    assessment = None
    if category is not None and error is None:
        rating = "Safe" if category.startswith("NA") else "Unsafe"
        assessment = {"rating": rating, "category": category, "rationale": "r", "score": score}
    verdict = {
        "schema": "moderator.verdict/v1",
        "event_id": event_id,
        "tenant_id": tenant,
        "object": {
            "bucket": "uploads",
            "key": key or f"{tenant}/2026/11/29/{event_id}.jpg",
            "version_id": None,
            "etag": None,
            "sha256": hashlib.sha256(event_id.encode()).hexdigest(),
            "format": "JPEG",
            "width": 10,
            "height": 10,
        },
        "decision": decision,
        "assessment": assessment,
        "policy": {"tenant_id": tenant, "surface": "default", "version": pol.version},
        "model": {"engine": engine, "name": model_name, "revision": None, "categories": []},
        "source": "model",
        "error": {"code": error, "message": "boom"} if error else None,
        "timings_ms": {"fetch": 1.0, "queue": 0.0, "infer": 2.0, "total": 3.0},
        "decided_at": decided_at.isoformat().replace("+00:00", "Z"),
        "trace_id": "0" * 32,
    }
    return {
        "schema": "moderator.audit/v1",
        "verdict": verdict,
        "uploaded_at": BASE.isoformat().replace("+00:00", "Z"),
        "context": {"surface": "default", "user_id": "u-1"},
        "input": {"topic": "uploads", "partition": 0, "offset": 0, "timestamp_ms": None},
        "instance_id": "pod-1",
        "package_version": "0.1.0",
        "policy_hash": pol.hash,
        "prompt_sha256": None,
        "policy_document": pol.document,
        "generation": {"temperature": 0.0},
        "raw_output": '{"rating": "Safe"}',
        "attempts": 1,
    }


def sample_records() -> list[dict[str, Any]]:
    """Six rows of alpha and four of beta, one minute apart, alternating tenants early on."""
    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("a-0", ALPHA, {}),
        ("b-0", BETA, {"decision": "block", "category": "O4: Nudity Content", "score": 0.97}),
        ("a-1", ALPHA, {"decision": "block", "category": "O4: Nudity Content", "score": 0.91}),
        ("b-1", BETA, {}),
        ("a-2", ALPHA, {"decision": "review", "category": "O1: Hate, Humiliation, Harassment"}),
        ("b-2", BETA, {"decision": "review", "error": "engine_timeout", "category": None}),
        ("a-3", ALPHA, {"engine": "nudenet", "model_name": "320n"}),
        ("b-3", BETA, {}),
        ("a-4", ALPHA, {"decision": "review", "error": "corrupt_image", "category": None}),
        ("a-5", ALPHA, {"key": "alpha/" + "deep/" * 20 + "photo.jpg"}),
    ]
    return [
        record(event_id, tenant, BASE + timedelta(minutes=n), **extra)
        for n, (event_id, tenant, extra) in enumerate(specs)
    ]


def fill(store: AuditStore, records: list[dict[str, Any]] | None = None) -> None:
    """Insert through the store, spread over two partitions (two hash chains)."""
    items = [
        IncomingRecord(TOPIC, n % 2, n // 2, doc)
        for n, doc in enumerate(records if records is not None else sample_records())
    ]
    result = store.insert(items)
    assert not result.rejected, result.rejected
    assert result.inserted == len(items)


def make_db(path: Path) -> str:
    """A SQLite audit database holding the sample rows; returns its URL."""
    url = f"sqlite:///{path}"
    with AuditStore.open(url) as store:
        fill(store)
    return url
