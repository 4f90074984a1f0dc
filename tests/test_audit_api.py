"""The read-only audit HTTP API: tenant isolation, auth, filters, pagination, OpenAPI."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the audit API needs the api extra")

from fastapi.testclient import TestClient

from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditUnavailable, SchemaVersionError
from moderator.audit.models import AuditQuery
from moderator.audit.read.api import create_app
from moderator.audit.read.cursor import filters_digest
from moderator.audit.read.tokens import token_hash
from tests.audit_fixtures import ALPHA, BETA, fill, policy

ALPHA_TOKEN = "alpha-token"
TOKENS = {ALPHA_TOKEN: [ALPHA], "beta-token": [BETA], "root-token": ["*"]}
ALPHA_EVENTS = {"a-0", "a-1", "a-2", "a-3", "a-4", "a-5"}
BETA_EVENTS = {"b-0", "b-1", "b-2", "b-3"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        fill(opened)
        yield opened


@pytest.fixture
def client(store: AuditStore) -> Iterator[TestClient]:
    app = create_app(lambda: store, {token_hash(t): v for t, v in TOKENS.items()})
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, path: str, token: str | None = ALPHA_TOKEN, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, params=params, headers=headers)


def events(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["event_id"] for item in response.json()["items"]]


# -- tenant isolation ----------------------------------------------------------------------


def test_a_token_lists_only_its_tenants_rows(client: TestClient) -> None:
    assert set(events(get(client, "/v1/verdicts"))) == ALPHA_EVENTS
    assert set(events(get(client, "/v1/verdicts", "beta-token"))) == BETA_EVENTS
    assert set(events(get(client, "/v1/verdicts", "root-token"))) == ALPHA_EVENTS | BETA_EVENTS


def test_no_filter_combination_reaches_another_tenant(client: TestClient) -> None:
    for params in ({"decision": "block"}, {"category": "O4"}, {"model": "fake"}, {"limit": 1000}):
        assert set(events(get(client, "/v1/verdicts", **params))) <= ALPHA_EVENTS
    b0 = get(client, "/v1/verdicts/b-0", "beta-token").json()
    by_beta_hash = get(client, "/v1/verdicts", sha256=b0["sha256"])
    assert events(by_beta_hash) == []
    assert events(get(client, "/v1/verdicts", event_id="b-0")) == []


def test_tenant_filter_outside_the_token_is_403(client: TestClient) -> None:
    response = get(client, "/v1/verdicts", tenant=BETA)
    assert response.status_code == 403
    assert BETA in response.json()["detail"]
    assert set(events(get(client, "/v1/verdicts", tenant=ALPHA))) == ALPHA_EVENTS
    assert set(events(get(client, "/v1/verdicts", "root-token", tenant=BETA))) == BETA_EVENTS


def test_another_tenants_verdict_is_404_not_403(client: TestClient) -> None:
    hidden = get(client, "/v1/verdicts/b-0")
    missing = get(client, "/v1/verdicts/no-such-event")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()  # nothing tells the two apart
    own = get(client, "/v1/verdicts/a-1")
    assert own.status_code == 200
    body = own.json()
    assert body["tenant_id"] == ALPHA and body["decision"] == "block"
    assert body["record"]["verdict"]["event_id"] == "a-1"
    assert body["record"]["policy_document"] == policy(ALPHA).document


def test_policy_version_is_visible_only_to_tenants_that_used_it(client: TestClient) -> None:
    beta = policy(BETA)
    assert get(client, f"/v1/policy-versions/{beta.hash}").status_code == 404
    assert get(client, f"/v1/policy-versions/{beta.version}").status_code == 404
    for token in ("beta-token", "root-token"):
        response = get(client, f"/v1/policy-versions/{beta.hash}", token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["policy_hash"] == beta.hash and body["version"] == beta.version
        assert body["prompt"] == beta.document["prompt"]
        assert body["decision_table"] == beta.document["decision_table"]
        assert body["document"] == beta.document
    alpha = get(client, f"/v1/policy-versions/{policy(ALPHA).version}")  # the 16-hex prefix
    assert alpha.status_code == 200 and alpha.json()["tenant_id"] == ALPHA
    assert get(client, "/v1/policy-versions/not-a-hash").status_code == 404
    assert get(client, f"/v1/policy-versions/{'0' * 64}").status_code == 404


def test_empty_tenant_scope_matches_nothing_in_the_store(store: AuditStore) -> None:
    assert store.query(AuditQuery(tenant_ids=())).rows == []
    both = store.query(AuditQuery(tenant_ids=(ALPHA, BETA), limit=1000)).rows
    assert len(both) == 10
    assert {r.tenant_id for r in store.query(AuditQuery(tenant_ids=(BETA,))).rows} == {BETA}


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/verdicts", "/v1/verdicts/a-0", f"/v1/policy-versions/{policy(ALPHA).hash}"]
)
def test_missing_or_unknown_token_is_401(client: TestClient, path: str) -> None:
    for token in (None, "wrong-token", token_hash("alpha-token")):
        response = get(client, path, token)
        assert response.status_code == 401, (token, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    basic = client.get(path, headers={"Authorization": "Basic YWxwaGE6eA=="})
    assert basic.status_code == 401


def test_healthz_needs_no_token_and_reports_the_database(store: AuditStore) -> None:
    with TestClient(create_app(lambda: store, {})) as client:
        assert client.get("/healthz").json() == {"status": "ok"}

    def down() -> AuditStore:
        raise AuditUnavailable("audit store postgresql://db/x: connection refused")

    with TestClient(create_app(down, {token_hash("t"): ["*"]})) as client:
        assert client.get("/healthz").status_code == 503
        response = get(client, "/v1/verdicts", "t")
        assert response.status_code == 503
        assert "postgresql" not in response.text  # no connection details in responses


def test_answers_are_not_cached_or_sniffed(store: AuditStore) -> None:
    with TestClient(create_app(lambda: store, {token_hash("t"): ["*"]})) as client:
        for response in (
            get(client, "/v1/verdicts", "t"),
            client.get("/v1/verdicts"),  # 401
            client.get("/healthz"),
        ):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"


def test_a_store_that_is_not_usable_is_503_too(tmp_path: Path) -> None:
    """A file that is not a database, or one a newer release migrated: the store raises an
    AuditError, not AuditUnavailable; still one 503, never a 500 with a traceback."""
    garbage = tmp_path / "notadb.db"
    garbage.write_text("garbage\n" * 100)

    def broken() -> AuditStore:
        return AuditStore.open(f"sqlite:///{garbage}")

    def newer() -> AuditStore:
        raise SchemaVersionError("the audit database is at schema version 99")

    for opener in (broken, newer):
        with TestClient(create_app(opener, {token_hash("t"): ["*"]})) as client:
            assert client.get("/healthz").status_code == 503
            response = get(client, "/v1/verdicts", "t")
            assert response.status_code == 503
            assert response.json() == {"detail": "audit database unavailable"}


@pytest.mark.usefixtures("info_logs")
def test_the_server_logs_why_it_answers_503_once_per_cause_and_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from structlog.testing import capture_logs

    from moderator.audit.read import api_errors

    cause = {"text": "audit store postgresql://u:***@db/x: connection refused"}

    def down() -> AuditStore:
        raise AuditUnavailable(cause["text"])

    monkeypatch.setattr(api_errors, "UNAVAILABLE_LOG", api_errors.UnavailableLog(every_s=3600))
    with capture_logs() as logs, TestClient(create_app(down, {token_hash("t"): ["*"]})) as client:
        for _ in range(3):
            assert get(client, "/v1/verdicts", "t").status_code == 503
        cause["text"] = "audit store postgresql://u:***@db/x: password authentication failed"
        assert client.get("/healthz").status_code == 503
    lines = [line for line in logs if line["event"] == "audit_api_store_unavailable"]
    assert [(line["error"], line["answered_503"]) for line in lines] == [
        ("audit store postgresql://u:***@db/x: connection refused", 1),
        ("audit store postgresql://u:***@db/x: password authentication failed", 3),
    ]
    assert all(line["log_level"] == "warning" for line in lines)


# -- filters and pagination ----------------------------------------------------------------


def test_filters(client: TestClient) -> None:
    assert events(get(client, "/v1/verdicts", decision="block")) == ["a-1"]
    assert events(get(client, "/v1/verdicts", category="o4")) == ["a-1"]
    assert events(get(client, "/v1/verdicts", category="O1: Hate, Humiliation, Harassment")) == [
        "a-2"
    ]
    assert events(get(client, "/v1/verdicts", model="nudenet:320n")) == ["a-3"]
    assert events(get(client, "/v1/verdicts", object_key="alpha/2026/11/29/a-0.jpg")) == ["a-0"]
    window = get(client, "/v1/verdicts", since="2026-11-29T02:02:00", until="2026-11-29T02:05Z")
    assert events(window) == ["a-2", "a-1"]  # since inclusive, until exclusive, newest first
    day = get(client, "/v1/verdicts", since="2026-11-29", until="2026-11-30", sort="decided_at")
    assert events(day) == ["a-0", "a-1", "a-2", "a-3", "a-4", "a-5"]
    assert events(get(client, "/v1/verdicts", policy_version=policy(ALPHA).version)) != []
    assert events(get(client, "/v1/verdicts", since="2026-11-30")) == []
    assert set(events(get(client, "/v1/verdicts", bucket="uploads"))) == ALPHA_EVENTS
    assert events(get(client, "/v1/verdicts", bucket="elsewhere")) == []


@pytest.mark.parametrize(
    ("params", "status", "names"),
    [
        ({"since": "yesterday"}, 400, "since"),
        ({"sha256": "xyz"}, 400, "sha256"),
        ({"category": "O42"}, 400, "category"),
        ({"cursor": "garbage"}, 400, "cursor"),
        ({"since": "2026-11-30", "until": "2026-11-29"}, 400, "until"),
        ({"limit": 0}, 422, "limit"),
        ({"limit": 1001}, 422, "limit"),
        ({"decision": "maybe"}, 422, "decision"),
        ({"tenant_id": ALPHA}, 422, "tenant_id"),  # unknown parameter, not silently ignored
    ],
)
def test_bad_filter_values(client: TestClient, params: Any, status: int, names: str) -> None:
    response = get(client, "/v1/verdicts", **params)
    assert response.status_code == status, response.text
    assert names in response.text


def test_cursor_pagination_walks_every_row_once(client: TestClient) -> None:
    for sort in ("-decided_at", "decided_at"):
        seen: list[str] = []
        decided: list[datetime] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 4, "sort": sort}
            if cursor:
                params["cursor"] = cursor
            body = get(client, "/v1/verdicts", "root-token", **params).json()
            pages += 1
            seen += [item["event_id"] for item in body["items"]]
            decided += [datetime.fromisoformat(i["decided_at"]) for i in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 10
        assert decided == sorted(decided, reverse=sort.startswith("-"))
        assert all(d.tzinfo == UTC for d in decided)


def test_redacted_rows_have_no_record(client: TestClient, store: AuditStore) -> None:
    now = datetime(2026, 12, 31, tzinfo=UTC)
    store.redact(datetime(2026, 11, 29, 2, 1, tzinfo=UTC), now, tenant_ids=[ALPHA])
    body = get(client, "/v1/verdicts/a-0").json()
    assert body["record"] is None and body["object_key"] is None
    assert body["redacted_at"] is not None and body["decision"] == "allow"


# -- OpenAPI -------------------------------------------------------------------------------


def test_openapi_lists_endpoints_and_the_bearer_scheme(client: TestClient) -> None:
    doc = get(client, "/openapi.json").json()
    assert set(doc["paths"]) == {
        "/v1/verdicts",
        "/v1/verdicts/{event_id}",
        "/v1/verdicts/{event_id}/explanation",
        "/v1/policy-versions/{policy_hash}",
        "/healthz",
    }
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerToken"]["type"] == "http"
    assert schemes["bearerToken"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        op = ops["get"]
        assert set(ops) == {"get"}, "the API is read-only"
        assert op["summary"]
        if path == "/healthz":
            assert "security" not in op
        else:
            assert op["security"] == [{"bearerToken": []}]
            assert {"401", "503", "200"} <= set(op["responses"])
    listing = doc["paths"]["/v1/verdicts"]["get"]
    assert {"400", "403"} <= set(listing["responses"])
    params = {p["name"] for p in listing["parameters"]}
    assert {"tenant", "event_id", "object_key", "decision", "category", "since", "until"} <= params
    assert {"policy_version", "model", "sort", "limit", "cursor", "sha256"} <= params
    assert "VerdictPage" in doc["components"]["schemas"]
    assert "404" in doc["paths"]["/v1/verdicts/{event_id}"]["get"]["responses"]


# -- hostile parameters --------------------------------------------------------------------


def forged(doc: Any) -> str:
    """A cursor as an attacker would make one: base64url of any JSON text."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return base64.urlsafe_b64encode(text.encode()).decode()


AT = "2026-11-29T02:03:00+00:00"
F = filters_digest(AuditQuery())  # the unfiltered query's, as /v1/verdicts below
FORGED_CURSORS = [
    forged({"s": "-decided_at", "t": AT, "i": 2**63}),
    forged({"s": "-decided_at", "t": AT, "i": 10**400}),
    forged({"s": "-decided_at", "t": AT, "e": 2**63, "f": F}),
    forged('{"s": "-decided_at", "t": "' + AT + '", "i": 1e308}'),
    forged('{"s": "-decided_at", "t": "' + AT + '", "e": 1e400, "f": "' + F + '"}'),
    forged('{"s": "-decided_at", "t": "' + AT + '", "i": Infinity}'),
    forged('{"s": "-decided_at", "t": "' + AT + '", "e": NaN, "f": "' + F + '"}'),
    forged({"s": ["-decided_at"], "t": AT, "e": "a-1", "f": F}),
    forged({"s": "-decided_at", "t": [AT], "e": "a-1", "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": ["a-1"], "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": "a\u0000", "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": "\ud800", "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": "", "f": F}),
    forged({"s": "-decided_at", "t": "0001-01-01T00:00:00+01:00", "e": "a-1", "f": F}),
    forged({"s": "-decided_at", "t": "9999-12-31T23:59:59-23:59", "e": "a-1", "f": F}),
    forged({"s": "-decided_at", "t": "2026-11-29T02:03:00", "e": "a-1", "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": "a-1", "x": 1, "f": F}),
    forged({"s": "-decided_at", "t": AT, "e": "a-1", "f": "0" * 16}),  # other filters
    forged({"s": "-decided_at", "t": AT, "e": "a-1"}),  # no filters' digest
    forged([AT, "a-1"]),
    forged("[" * 3000 + "]" * 3000),
    forged("null"),
    "%%%",
    "\u00e9t\u00e9",
    base64.urlsafe_b64encode(b"\xff\xfe{").decode(),
    "A" * 9000,
]


@pytest.mark.parametrize("cursor", FORGED_CURSORS, ids=range(len(FORGED_CURSORS)))
def test_forged_cursors_are_400_with_one_line(client: TestClient, cursor: str) -> None:
    response = get(client, "/v1/verdicts", cursor=cursor)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("cursor: ") and "\n" not in detail and len(detail) < 200


@pytest.mark.parametrize(
    "params",
    [
        {"since": "9999-12-31T23:59:59-23:59"},
        {"until": "9999-12-31T23:59:59-23:59"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"since": "0001-01-01"},
        {"until": "0999-12-31T23:59:59Z"},
        {"since": "2026-11-29T02:00:00+23:59", "until": "9999-12-31T23:59:59.999999-00:01"},
        {"object_key": "a\u0000b"},
        {"bucket": "\u0000"},
        {"model": "fake:\u0000"},
        {"category": "O4: \u0000"},
        {"object_key": "k" * 5000},
    ],
)
def test_extreme_or_unstorable_values_are_400_with_one_line(
    client: TestClient, params: dict[str, str]
) -> None:
    response = get(client, "/v1/verdicts", **params)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.split(":")[0] in params and "\n" not in detail and len(detail) < 300


def test_the_latest_representable_times_are_accepted(client: TestClient) -> None:
    window = {"since": "1000-01-01", "until": "9999-12-31T23:59:59.999999Z"}
    assert set(events(get(client, "/v1/verdicts", **window))) == ALPHA_EVENTS


def test_validation_errors_are_one_line(client: TestClient) -> None:
    for params in ({"limit": "many"}, {"limit": 10**30}, {"sort": "x"}, {"nope": "1"}):
        response = get(client, "/v1/verdicts", **params)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail, detail


def test_a_parameter_given_twice_is_422(client: TestClient) -> None:
    response = client.get(
        "/v1/verdicts?tenant=alpha&tenant=beta", headers={"Authorization": f"Bearer {ALPHA_TOKEN}"}
    )
    assert response.status_code == 422
    assert response.json() == {"detail": "tenant: given more than once"}


def test_an_unstorable_event_id_is_404(client: TestClient) -> None:
    for event_id in ("a%00", "x" * 5000):
        assert get(client, f"/v1/verdicts/{event_id}").status_code == 404


# -- no cross-tenant volumes ---------------------------------------------------------------

VOLUME_FIELDS = {"id", "seq", "offset", "partition", "topic", "prev_hash", "row_hash"}


def test_items_reveal_no_row_ids_chain_positions_or_offsets(client: TestClient) -> None:
    body = get(client, "/v1/verdicts", limit=2).json()
    single = get(client, "/v1/verdicts/a-1").json()
    for item in [*body["items"], single]:
        assert not VOLUME_FIELDS & set(item), item.keys()
        assert set(item["record"]["input"]) <= {"topic", "timestamp_ms"}
    assert single["record"]["verdict"]["event_id"] == "a-1"  # the rest of the record stays
    doc = json.loads(base64.urlsafe_b64decode(body["next_cursor"]))
    assert set(doc) == {"s", "t", "e", "f"} and doc["e"] in ALPHA_EVENTS
    schema = get(client, "/openapi.json").json()["components"]["schemas"]
    for name, model in schema.items():
        assert not VOLUME_FIELDS & set(model.get("properties", {})), name


def test_pages_walk_rows_with_equal_times_by_event_id(tmp_path: Path) -> None:
    from tests.audit_fixtures import BASE, record

    same = [record(f"t-{n:02d}", ALPHA, BASE) for n in (5, 1, 9, 3, 7, 2, 8)]
    with AuditStore.open(f"sqlite:///{tmp_path / 'same.db'}") as store:
        fill(store, same)
        app = create_app(lambda: store, {token_hash(ALPHA_TOKEN): [ALPHA]})
        with TestClient(app) as client:
            for sort in ("decided_at", "-decided_at"):
                seen: list[str] = []
                cursor: str | None = None
                while True:
                    params: dict[str, Any] = {"limit": 3, "sort": sort}
                    if cursor:
                        params["cursor"] = cursor
                    body = get(client, "/v1/verdicts", **params).json()
                    seen += [item["event_id"] for item in body["items"]]
                    cursor = body["next_cursor"]
                    if cursor is None:
                        break
                expected = sorted(r["verdict"]["event_id"] for r in same)
                assert seen == (expected if sort == "decided_at" else expected[::-1])
