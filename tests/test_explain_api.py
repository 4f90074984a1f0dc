"""GET /v1/verdicts/{event_id}/explanation: the same document as `moderator explain --format
json`, under the same per-tenant token rules as the other routes (another tenant's verdict is
answered like an unknown one)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the audit API needs the api extra")

from fastapi.testclient import TestClient

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.audit.read.api import create_app
from moderator.audit.read.tokens import token_hash
from moderator.explain.lookup import explain_event
from moderator.explain.render import explanation_json
from tests.test_explain import DECIDED, audit_record, demo, unsafe

TOKENS = {"kids-token": ["kidsplace"], "acme-token": ["acme"], "root-token": ["*"]}
PATH = "/v1/verdicts/{}/explanation"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    records = [
        audit_record("k-1", demo("kidsplace"), assessment=unsafe("O6", 0.252)),
        audit_record("a-1", demo("acme"), assessment=unsafe("O5", 0.74)),
    ]
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        opened.insert([IncomingRecord("moderation.audit", 0, n, r) for n, r in enumerate(records)])
        yield opened


@pytest.fixture
def client(store: AuditStore) -> Iterator[TestClient]:
    app = create_app(lambda: store, {token_hash(t): v for t, v in TOKENS.items()})
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, event_id: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(PATH.format(event_id), headers=headers)


def test_the_tenant_gets_the_explain_document(client: TestClient, store: AuditStore) -> None:
    response = get(client, "k-1", "kids-token")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = explain_event(store, "k-1")
    assert expected is not None
    assert body == explanation_json(expected) | {"decided_at": body["decided_at"]}
    assert body["decided_at"] == "2026-11-29T02:05:00Z"
    assert body["rule"]["text"] == "score 0.252 >= review_at 0.2 for O6 -> review"
    assert get(client, "k-1", "root-token").json() == body


def test_another_tenants_verdict_is_the_same_404_as_an_unknown_one(client: TestClient) -> None:
    hidden = get(client, "a-1", "kids-token")
    missing = get(client, "no-such-event", "kids-token")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() == {"detail": "no such verdict"}
    assert get(client, "a-1", "acme-token").status_code == 200
    assert get(client, "a%00b", "root-token").status_code == 404  # a NUL: no stored id


def test_a_token_is_needed(client: TestClient) -> None:
    for token in (None, "wrong-token"):
        response = get(client, "k-1", token)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_redacted_verdict_is_still_explained(client: TestClient, store: AuditStore) -> None:
    store.redact(DECIDED + timedelta(seconds=1), DECIDED + timedelta(days=31))
    body = get(client, "k-1", "kids-token").json()
    assert body["redacted_at"] == "2026-12-30T02:05:00Z" and body["input"]["key"] is None
    assert body["rule"]["text"] == "score 0.252 >= review_at 0.2 for O6 -> review"
    assert body["missing"][0].startswith("audit record: redacted by retention")


def test_the_openapi_document_describes_the_route(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers={"Authorization": "Bearer kids-token"}).json()
    route = spec["paths"]["/v1/verdicts/{event_id}/explanation"]["get"]
    assert set(route["responses"]) >= {"200", "401", "404", "422", "503"}
    ok = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/VerdictExplanation"}
    schema = spec["components"]["schemas"]["VerdictExplanation"]
    assert {"schema", "rule", "steps", "missing", "policy"} <= set(schema["properties"])
    assert route["security"] == [{"bearerToken": []}]
