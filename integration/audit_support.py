"""Shared by the audit store tests: audit records built from the repository's real policies,
and stores on SQLite (a temp file) or PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from moderator.audit.db.connect import normalize_url
from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Verdict,
    VerdictError,
    VerdictObject,
)
from moderator.policy.compiled import TenantPolicy, compile_policy
from moderator.policy.load import load_file
from moderator.policy.resolve import resolve
from moderator.settings import TenancySettings

ROOT = Path(__file__).resolve().parents[1]
# What .ci/postgres.sh sets up; run it once (as root) to get the PostgreSQL tier locally.
PG_URL = os.environ.get(
    "AUDIT_TEST_POSTGRES_URL", "postgresql://moderator:moderator-test@127.0.0.1:5432/test"
)
BASE_TIME = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
TOPIC = "moderation.audit"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@functools.cache
def policy(tenant: str, surface: str = "default") -> TenantPolicy:
    files = {p.stem: load_file(p) for p in sorted((ROOT / "policies").glob("*.yaml"))}
    return compile_policy(resolve(files, tenant, surface, TenancySettings()))


def make_record(
    i: int,
    *,
    tenant: str = "kids",
    decided_at: datetime | None = None,
    decision: str = "allow",
    category: str | None = "NA: None applying",
    engine: str = "fake",
    model_name: str = "fake-guard",
    surface: str = "default",
    error: str | None = None,
    user_id: str = "u-1",
) -> dict[str, Any]:
    """A real AuditRecord v1 (as the sink parses it from the audit topic)."""
    compiled = policy(tenant, surface)
    assessment = None
    if category is not None and error is None:
        rating = "Safe" if category.startswith("NA") else "Unsafe"
        assessment = Assessment(rating=rating, category=category, rationale="r", score=0.25)
    verdict = Verdict(
        event_id=f"ev-{i:05d}",
        tenant_id=tenant,
        object=VerdictObject(bucket="uploads", key=f"{tenant}/u/{i}.jpg", sha256=f"{i:064x}"),
        decision=decision,  # type: ignore[arg-type]
        assessment=assessment,
        policy=PolicyRef(tenant_id=tenant, surface=surface, version=compiled.version),
        model=ModelInfo(engine=engine, name=model_name, smoke_test=engine == "fake"),
        error=VerdictError(code=error, message="boom") if error else None,  # type: ignore[arg-type]
        decided_at=decided_at or BASE_TIME + timedelta(seconds=i),
        trace_id="0" * 32,
    )
    audit = AuditRecord(
        verdict=verdict,
        uploaded_at=BASE_TIME,
        context={"surface": surface, "user_id": user_id},
        input=InputCoords(topic="uploads", partition=0, offset=i),
        instance_id="pod-1",
        package_version="0.1.0",
        policy_hash=compiled.full_hash,
        prompt_sha256=compiled.prompt_sha256,
        policy_document=compiled.document(),
        generation={"temperature": 0.0},
        raw_output='{"rating": "Safe"}',
    )
    return dict(json.loads(audit.to_json()))


def incoming(
    records: list[dict[str, Any]], partition: int = 0, first_offset: int = 0
) -> list[IncomingRecord]:
    return [IncomingRecord(TOPIC, partition, first_offset + n, r) for n, r in enumerate(records)]


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is unreachable: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file, or a fresh PostgreSQL schema dropped after."""
    if backend == "sqlite":
        (tmp_path / "audit").mkdir(parents=True, exist_ok=True)  # writers make no folders
        yield f"sqlite:///{tmp_path / 'audit' / 'audit.db'}"
        return
    problem = postgres_problem()
    if problem is not None:
        # Locally a missing server skips with the reason; in CI it must fail, never hide.
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI must run .ci/postgres.sh first)")
        pytest.skip(f"{problem} (run .ci/postgres.sh to set it up)")
    import psycopg

    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def opened(backend: str, tmp_path: Path) -> Iterator[tuple[AuditStore, Engine]]:
    """A migrated store, and a separate engine for tampering with its tables directly."""
    with database_url(backend, tmp_path) as url:
        store = AuditStore.open(url)
        raw = create_engine(normalize_url(url))
        try:
            yield store, raw
        finally:
            raw.dispose()
            store.close()
