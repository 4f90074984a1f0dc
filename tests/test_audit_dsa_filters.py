"""`audit export-dsa` takes every filter of `audit query` (the statement of one upload by
--event-id), and leaves out the decisions of a smoke-test model unless --include-smoke-test."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.dsa.export import from_smoke_test_model, puid_for
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.errors import ErrorCode
from tests.dsa_fixtures import DECIDED_AT, record
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "filter-salt-0123456789abcdef"
FAKE = {"engine": "fake", "name": "fake", "smoke_test": True}
REAL = {"engine": "lmdeploy", "name": "AIML-TUDA/QwenGuard-v1.2-3B", "smoke_test": False}


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store; tenant `acme` hides reviews (they restrict), `kids` keeps them visible."""
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "acme.yaml").write_text("dsa:\n  review_restricts_visibility: true\n")
    (policies / "kids.yaml").write_text("on_error: block\n")
    path = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{path}")
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    AuditStore.open(f"sqlite:///{path}").close()
    return path


def by_model(model: dict[str, Any] | None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A fixture record whose verdict names `model` (None: no model, as in an early error)."""
    rec = record(*args, **kwargs)
    rec["verdict"]["model"] = model
    return rec


def store(path: Path, records: list[dict[str, Any]]) -> None:
    items = [IncomingRecord("moderation.audit", 0, i, r) for i, r in enumerate(records)]
    with AuditStore.open(f"sqlite:///{path}") as audit:
        assert audit.insert(items).inserted == len(records)


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """Exit code, the statements' PUIDs, stderr."""
    code = main(["audit", "export-dsa", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line)["puid"] for line in out.splitlines()], err


def puids(*events: str, tenant: str = "acme") -> list[str]:
    return [puid_for(tenant, event, SALT) for event in events]


def at(seconds: int) -> datetime:
    return DECIDED_AT + timedelta(seconds=seconds)


def several() -> list[dict[str, Any]]:
    hate = "O1: Hate, Humiliation, Harassment"
    return [
        by_model(REAL, "block", event_id="b-1", decided_at=at(1)),
        by_model(REAL, "review", event_id="r-2", decided_at=at(2)),  # acme: restricts
        by_model(REAL, "block", event_id="b-3", category=hate, decided_at=at(3)),
        by_model(REAL, "allow", event_id="a-4", decided_at=at(4)),
        by_model(REAL, "review", event_id="r-5", tenant="kids", decided_at=at(5)),  # visible
    ]


# -- filters -------------------------------------------------------------------------------------


def test_event_id_gives_the_statement_of_that_upload_only(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(db, several())
    code, found, err = export(capsys, "--event-id", "r-2")
    assert (code, found) == (0, puids("r-2")), err
    assert "1 statement of reasons" in err


@pytest.mark.parametrize("event", ["a-4", "r-5", "nowhere"])
def test_event_id_of_a_decision_without_a_statement_exports_nothing(
    db: Path, capsys: pytest.CaptureFixture[str], event: str
) -> None:
    store(db, several())
    code, found, err = export(capsys, "--event-id", event)
    assert (code, found) == (0, []), err


def test_the_other_filters_mean_what_they_mean_in_audit_query(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(db, several())
    assert export(capsys, "--category", "o1")[1] == puids("b-3")
    assert export(capsys, "--bucket", "uploads", "--sha256", "AB" * 32)[1] == puids(
        "b-1", "r-2", "b-3"
    )
    assert export(capsys, "--bucket", "elsewhere")[1] == []
    assert export(capsys, "--model", "lmdeploy")[1] == puids("b-1", "r-2", "b-3")
    assert export(capsys, "--model", "openai")[1] == []


def test_decision_narrows_to_blocks_or_restricting_reviews(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(db, several())
    assert export(capsys, "--decision", "block")[1] == puids("b-1", "b-3")
    code, found, err = export(capsys, "--decision", "review")
    assert (code, found) == (0, puids("r-2")), err
    assert "1 review that keeps the content visible" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--decision", "allow"],
            "moderator: --decision: allow decisions restrict nothing and are never exported; "
            "use block or review\n",
        ),
        (["--decision", "Block"], "moderator: --decision: must be one of allow, review, block"),
        (["--event-id", "ev 1"], "moderator: --event-id: expected 1-128 of [A-Za-z0-9._:-]"),
        (["--sha256", "abc"], "moderator: --sha256: expected 64 hex digits"),
    ],
)
def test_a_bad_filter_value_is_refused_before_the_store_is_read(
    db: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    db.unlink()  # an export that started would fail on the missing store (exit 1)
    code, found, err = export(capsys, *args)
    assert (code, found) == (2, []), err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_event_id_given_twice_is_a_usage_error(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "export-dsa", "--event-id", "b-1", "--event-id", "b-3"])
    assert exited.value.code == 2
    assert "--event-id: given twice ('b-1', 'b-3')" in capsys.readouterr().err


# -- smoke-test models ---------------------------------------------------------------------------


def test_smoke_test_model_is_read_from_the_verdict() -> None:
    assert from_smoke_test_model(by_model(FAKE))
    assert not from_smoke_test_model(by_model(REAL))
    assert not from_smoke_test_model(by_model(None))
    assert not from_smoke_test_model(by_model({**FAKE, "smoke_test": "yes"}))


def test_decisions_of_a_smoke_test_model_are_skipped_and_counted(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(
        db,
        [
            by_model(REAL, "block", event_id="b-1"),
            by_model(FAKE, "block", event_id="f-2"),
            by_model(FAKE, "review", event_id="f-3"),
            by_model(FAKE, category=None, error=ErrorCode.ENGINE_ERROR, event_id="f-4"),
            by_model(None, category=None, error=ErrorCode.CORRUPT_IMAGE, event_id="c-5"),
        ],
    )
    code, found, err = export(capsys)
    assert (code, found) == (0, puids("b-1", "c-5")), err
    assert "moderator: 2 statements of reasons (schema 2025-07-01)" in err
    assert "skipped: 3 decisions of a smoke-test model, 0 reviews" in err
    code, found, err = export(capsys, "--event-id", "f-2")
    assert (code, found) == (0, []), err
    assert "skipped: 1 decision of a smoke-test model," in err


def test_include_smoke_test_exports_them_and_says_so(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(db, [by_model(REAL, "block", event_id="b-1"), by_model(FAKE, "block", event_id="f-2")])
    code, found, err = export(capsys, "--include-smoke-test")
    assert (code, found) == (0, puids("b-1", "f-2")), err
    assert "2 statements of reasons (1 by a smoke-test model, --include-smoke-test) (schema" in err
    assert "skipped: 0 decisions of a smoke-test model," in err
    code, found, err = export(capsys, "--include-smoke-test", "--event-id", "b-1")
    assert (code, found) == (0, puids("b-1")), err
    assert "smoke-test model, --include-smoke-test" not in err


def test_a_smoke_test_decision_of_a_tenant_without_policy_does_not_stop_the_export(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store(db, [by_model(REAL, event_id="b-1"), by_model(FAKE, event_id="f-2", tenant="gone")])
    code, found, err = export(capsys)
    assert (code, found) == (0, puids("b-1")), err
    code, found, err = export(capsys, "--include-smoke-test")
    assert (code, found) == (1, [])
    assert "event f-2 (tenant gone): no policy file" in err
