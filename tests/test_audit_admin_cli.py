"""`moderator audit retention` and the configuration checks of `audit serve`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.integrity.anchors import FileAnchorSink, export_anchor
from moderator.audit.models import AuditQuery
from moderator.cli.main import main
from moderator.settings import load_settings
from tests.audit_fixtures import ALPHA, BETA, fill, record
from tests.policy_fixtures import clear_moderator_env

TOKEN_HASH = "a" * 64


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def aged_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """alpha keeps 30 days, everyone else (default) 365: rows on both sides of each cutoff."""
    clear_moderator_env(monkeypatch)
    now = datetime.now(UTC)
    ages = {"a-old": (ALPHA, 40), "a-new": (ALPHA, 10), "b-old": (BETA, 400), "b-mid": (BETA, 40)}
    ages |= {"g-old": ("gamma", 366), "a-older": (ALPHA, 90)}
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with AuditStore.open(url) as store:
        fill(store, [record(e, t, now - timedelta(days=d)) for e, (t, d) in ages.items()])
    monkeypatch.setenv("MODERATOR_AUDIT__URL", url)
    monkeypatch.setenv("MODERATOR_AUDIT__RETENTION_DAYS", json.dumps({ALPHA: 30, "default": 365}))
    return url


def redacted(url: str) -> set[str]:
    with AuditStore.open(url) as store:
        rows = store.query(AuditQuery()).rows
    return {row.event_id for row in rows if row.redacted_at is not None}


def test_retention_dry_run_counts_then_redacts(
    aged_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "retention", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "tenant  would redact",
        "alpha   2",
        "beta    1",
        "gamma   1",
        "total   4",
    ]
    assert redacted(aged_db) == set()
    code, out, _ = run(capsys, "retention")
    assert code == 0
    assert out.splitlines()[0] == "tenant  redacted" and out.splitlines()[-1] == "total   4"
    assert redacted(aged_db) == {"a-old", "a-older", "b-old", "g-old"}
    code, out, _ = run(capsys, "retention", "--dry-run")
    assert out.splitlines()[-1] == "total   0"


def test_retention_keeps_the_chains_verifiable(
    aged_db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    with AuditStore.open(aged_db) as store:
        export_anchor(store, [FileAnchorSink(anchors)])
    assert run(capsys, "retention")[0] == 0
    code, out, _ = run(capsys, "verify", "--anchor-file", str(anchors))
    assert code == 0, out
    assert "(4 redacted)" in out


def test_retention_unset_keeps_everything(
    aged_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODERATOR_AUDIT__RETENTION_DAYS")
    code, out, err = run(capsys, "retention")
    assert (code, out) == (0, "") and "kept forever" in err
    assert redacted(aged_db) == set()


# -- serve (configuration only: the server itself runs in integration/test_audit_api.py) ----


def test_api_tokens_are_validated_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_AUDIT__API_TOKENS", json.dumps({"A" * 64: [ALPHA]}))
    assert load_settings().audit.api_tokens == {TOKEN_HASH: [ALPHA]}
    monkeypatch.setenv("MODERATOR_AUDIT__API_TOKENS", json.dumps({"secret": [ALPHA]}))
    with pytest.raises(Exception, match=r"audit\.api_tokens"):
        load_settings()
    monkeypatch.setenv("MODERATOR_AUDIT__API_TOKENS", json.dumps({TOKEN_HASH: []}))
    with pytest.raises(Exception, match="names no tenant"):
        load_settings()


def test_serve_without_tokens_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    code, _, err = run(capsys, "serve")
    assert code == 2 and "audit.api_tokens" in err


def test_serve_without_the_api_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn → ImportError
    code, _, err = run(capsys, "serve")
    assert code == 2
    assert err.strip() == (
        "moderator: audit serve needs the api extra (uvicorn is missing): "
        "pip install 'moderator[api]'"
    )


def test_a_long_retention_shows_each_step_on_stderr(
    aged_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.cli import progress

    code, _, err = run(capsys, "retention", "--dry-run")
    assert code == 0 and "retention:" not in err
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # as if each step took 5 s
    code, _, err = run(capsys, "retention")
    assert code == 0
    lines = [line.rsplit(",", 1)[0] for line in err.splitlines() if line.startswith("retention:")]
    assert lines == [
        "retention: alpha done, 2 rows redacted so far, step 1 of 2",
        "retention: default done, 4 rows redacted so far, step 2 of 2",
    ]
