"""The audit HTTP API keeps the contract of docs/audit.md: a restricted token's lookup of one
verdict has its tenants in the query (another tenant's row is never read), the OpenAPI document
needs a token like every endpoint but /healthz, there are no interactive docs pages, and an
empty or NUL `tenant` is a bad value (400), not a tenant the token lacks (403)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the audit API needs the api extra")

from fastapi.testclient import TestClient

from moderator.audit.db.store import AuditStore
from moderator.audit.read.api import create_app
from moderator.audit.read.tokens import token_hash
from tests.audit_fixtures import ALPHA, BETA, fill

ALPHA_TOKEN = "alpha-token"
TOKENS = {ALPHA_TOKEN: [ALPHA], "both-token": [ALPHA, BETA], "root-token": ["*"]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        fill(opened)
        yield opened


@pytest.fixture
def loaded(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The event ids of the rows the store reads into AuditRows (record and policy restored)."""
    seen: list[str] = []
    read_row = AuditStore._row

    def spy(self: AuditStore, conn: Any, row: Any, docs: Any) -> Any:
        seen.append(row["event_id"])
        return read_row(self, conn, row, docs)

    monkeypatch.setattr(AuditStore, "_row", spy)
    return seen


@pytest.fixture
def client(store: AuditStore) -> Iterator[TestClient]:
    app = create_app(lambda: store, {token_hash(t): v for t, v in TOKENS.items()})
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, path: str, token: str | None = ALPHA_TOKEN, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, params=params, headers=headers)


# -- one verdict: the tenant is part of the query --------------------------------------------


def test_a_restricted_get_never_reads_another_tenants_row(
    store: AuditStore, loaded: list[str]
) -> None:
    assert store.get("b-0", tenant_ids=(ALPHA,)) is None
    assert store.get("b-0", tenant_ids=()) is None
    assert loaded == []  # found by the query's tenant condition, not by a check after reading
    for scope in ((BETA,), (ALPHA, BETA), None):
        row = store.get("b-0", tenant_ids=scope)
        assert row is not None and row.tenant_id == BETA
    assert loaded == ["b-0"] * 3


@pytest.mark.parametrize("suffix", ["", "/explanation"])
def test_the_api_never_reads_another_tenants_row(
    client: TestClient, loaded: list[str], suffix: str
) -> None:
    hidden = get(client, f"/v1/verdicts/b-0{suffix}")
    missing = get(client, f"/v1/verdicts/no-such-event{suffix}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() == {"detail": "no such verdict"}
    assert hidden.headers == missing.headers
    assert loaded == []
    assert get(client, f"/v1/verdicts/b-0{suffix}", "both-token").status_code == 200
    assert get(client, f"/v1/verdicts/b-0{suffix}", "root-token").status_code == 200
    assert get(client, f"/v1/verdicts/a-1{suffix}").status_code == 200
    assert "b-0" in loaded and "a-1" in loaded


# -- the OpenAPI document and the docs pages ------------------------------------------------


def test_the_openapi_document_needs_a_token(client: TestClient) -> None:
    for token in (None, "wrong-token"):
        response = get(client, "/openapi.json", token)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert "paths" not in response.text
    for token in TOKENS:
        doc = get(client, "/openapi.json", token).json()
        assert "/v1/verdicts" in doc["paths"] and "/openapi.json" not in doc["paths"]
    assert "/healthz" in doc["paths"] and "needs `Authorization" in doc["info"]["description"]


def test_there_are_no_interactive_docs_pages(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        for token in (None, "root-token"):
            response = get(client, path, token)
            assert response.status_code == 404, (path, token)
            assert "cdn.jsdelivr.net" not in response.text


# -- `tenant` values -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "alpha\x00", "\x00", "Alpha", " alpha"])
@pytest.mark.parametrize("token", [ALPHA_TOKEN, "root-token"])
def test_a_bad_tenant_value_is_400_for_every_token(
    client: TestClient, value: str, token: str
) -> None:
    response = get(client, "/v1/verdicts", token, tenant=value)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("tenant: expected a tenant id") and "\n" not in detail


def test_a_good_tenant_value_outside_the_token_is_still_403(client: TestClient) -> None:
    response = get(client, "/v1/verdicts", tenant=BETA)
    assert response.status_code == 403
    assert response.json() == {"detail": "this token may not read tenant 'beta'"}
    assert get(client, "/v1/verdicts", "both-token", tenant=BETA).status_code == 200
