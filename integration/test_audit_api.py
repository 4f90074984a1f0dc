"""`moderator audit serve` as a real process: uvicorn, settings from the environment, bearer
tokens by SHA-256, tenant isolation over HTTP, no store bookkeeping in answers, logs on stderr."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_support import incoming, make_record
from moderator.audit.db.store import AuditStore

pytest.importorskip("fastapi", reason="the audit API needs the api extra")
pytest.importorskip("uvicorn", reason="the audit API needs the api extra")
httpx = pytest.importorskip("httpx")

KIDS_TOKEN = "kids-secret-token"
ROOT_TOKEN = "root-secret-token"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with AuditStore.open(url) as store:
        kids = [make_record(i, tenant="kids") for i in range(3)]
        news = [make_record(i, tenant="news") for i in range(3, 5)]
        store.insert(incoming(kids + news))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    env |= {
        "MODERATOR_AUDIT__URL": url,
        "MODERATOR_AUDIT__API_TOKENS": json.dumps(
            {sha256(KIDS_TOKEN): ["kids"], sha256(ROOT_TOKEN): ["*"]}
        ),
        "MODERATOR_LOG__LEVEL": "warning",
    }
    command = [sys.executable, "-m", "moderator.cli.main", "audit", "serve", "--port", str(port)]
    log, stdout = tmp_path / "serve.log", tmp_path / "serve.out"
    with log.open("wb") as err, stdout.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"audit serve did not start: {log.read_text()}")
            time.sleep(0.1)
        yield base, stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_served_api_isolates_tenants(server: tuple[str, Path]) -> None:
    base, stdout = server
    kids = {"Authorization": f"Bearer {KIDS_TOKEN}"}
    listed = httpx.get(f"{base}/v1/verdicts", headers=kids).json()
    assert {item["tenant_id"] for item in listed["items"]} == {"kids"}
    assert len(listed["items"]) == 3
    assert (
        httpx.get(f"{base}/v1/verdicts", params={"tenant": "news"}, headers=kids).status_code == 403
    )
    assert httpx.get(f"{base}/v1/verdicts/ev-00003", headers=kids).status_code == 404
    assert httpx.get(f"{base}/v1/verdicts/ev-00001", headers=kids).status_code == 200
    assert httpx.get(f"{base}/v1/verdicts").status_code == 401
    root = {"Authorization": f"Bearer {ROOT_TOKEN}"}
    everything = httpx.get(f"{base}/v1/verdicts", headers=root).json()["items"]
    assert {item["tenant_id"] for item in everything} == {"kids", "news"}
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    assert httpx.get(f"{base}/docs").status_code == 404
    spec = httpx.get(f"{base}/openapi.json", headers=kids).json()
    assert "/v1/verdicts" in spec["paths"]
    for item in [*listed["items"], *everything]:
        assert not {"id", "seq", "offset", "partition", "row_hash"} & set(item)
        assert "offset" not in item["record"]["input"]
    assert stdout.read_bytes() == b""  # uvicorn's access log goes to stderr too
