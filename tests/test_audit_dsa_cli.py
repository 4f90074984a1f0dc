"""`moderator audit export-dsa` over a SQLite audit store and a policy directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.dsa.export import puid_for, validate_statement
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.errors import ErrorCode
from tests.dsa_fixtures import DECIDED_AT, SECRETS, record
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "cli-salt-0123456789abcdef"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "acme.yaml").write_text(
        "dsa:\n  review_restricts_visibility: true\n"
        "surfaces:\n  profile_photo:\n    on_error: block\n"
    )
    (policies / "kids.yaml").write_text("on_error: block\n")  # reviews stay visible
    db = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{db}")
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    AuditStore.open(f"sqlite:///{db}").close()
    return {"db": db, "policies": policies, "tmp": tmp_path}


def store_records(db: Path, records: list[dict[str, Any]]) -> None:
    items = [IncomingRecord("moderation.audit", 0, i, r) for i, r in enumerate(records)]
    with AuditStore.open(f"sqlite:///{db}") as store:
        result = store.insert(items)
        assert result.inserted == len(records), result


def at(seconds: int) -> datetime:
    return DECIDED_AT + timedelta(seconds=seconds)


def mixed() -> list[dict[str, Any]]:
    return [
        record("review", event_id="e-2", decided_at=at(2)),  # acme: restricts → exported
        record("block", event_id="e-1", decided_at=at(1)),
        record("allow", event_id="e-3", decided_at=at(3)),  # never read
        record("review", event_id="e-4", tenant="kids", decided_at=at(4)),  # visible
        record(category=None, error=ErrorCode.OBJECT_NOT_FOUND, event_id="e-5", decided_at=at(5)),
        record(category=None, error=ErrorCode.CORRUPT_IMAGE, event_id="e-6", decided_at=at(6)),
        record("block", event_id="e-7", tenant="kids", decided_at=at(7)),
    ]


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    code = main(["audit", "export-dsa", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_exports_restricting_decisions_in_time_order(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_records(env["db"], mixed())
    code, statements, err = export(capsys)
    assert code == 0, err
    expected = [("acme", "e-1"), ("acme", "e-2"), ("acme", "e-6"), ("kids", "e-7")]
    assert [s["puid"] for s in statements] == [puid_for(t, e, SALT) for t, e in expected]
    assert [s["decision_visibility"][0][20:] for s in statements] == [
        "CONTENT_REMOVED",
        "CONTENT_DISABLED",
        "CONTENT_REMOVED",
        "CONTENT_REMOVED",
    ]
    for statement in statements:
        assert validate_statement(statement) == []
        for secret in SECRETS:
            assert secret not in json.dumps(statement)
    assert "4 statements of reasons (schema 2025-07-01) in 1 batch of at most 100" in err
    assert "1 review that keeps the content visible" in err
    assert "1 error decision about no content of the tenant" in err
    assert "redacted" not in err  # said only when some statements come from kept columns


def test_filters_and_output_file(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store_records(env["db"], mixed())
    target = env["tmp"] / "sor.jsonl"
    code, lines, err = export(
        capsys, "--tenant", "acme", "--since", at(2).isoformat(), "--output", str(target)
    )
    assert (code, lines) == (0, []), err
    statements = [json.loads(line) for line in target.read_text().splitlines()]
    assert [s["puid"] for s in statements] == [puid_for("acme", e, SALT) for e in ("e-2", "e-6")]
    code, statements, err = export(capsys, "--until", at(2).isoformat())
    assert [s["puid"] for s in statements] == [puid_for("acme", "e-1", SALT)]


def test_platform_flags(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store_records(env["db"], [record()])
    code, [statement], err = export(
        capsys,
        "--territorial-scope",
        "EEA",
        "--terms-url",
        "https://example.com/terms",
        "--content-language",
        "DE",
        "--ground-text",
        "Terms, section 4",
    )
    assert code == 0, err
    assert len(statement["territorial_scope"]) == 30
    assert statement["decision_ground_reference_url"] == "https://example.com/terms"
    assert statement["content_language"] == "DE"
    assert statement["incompatible_content_ground"] == "Terms, section 4"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"source": "cache"},
        {"category": None, "error": ErrorCode.CORRUPT_IMAGE},
    ],
)
def test_redacted_rows_are_exported_from_the_columns_retention_keeps(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], fields: dict[str, Any]
) -> None:
    """The statement of a redacted row is the one its record gave, but for the upload time,
    which retention cleared: it is dated by the decision, and says so."""
    store_records(env["db"], [record(uploaded_at=None, **fields)])
    code, [whole], _ = export(capsys)
    assert code == 0
    with AuditStore.open(f"sqlite:///{env['db']}") as store:
        now = datetime.now(UTC)
        store.redact(now, now, tenant_ids=["acme"])
    code, [kept], err = export(capsys)
    assert code == 0, err
    assert kept == whole and validate_statement(kept) == []
    assert (
        "1 statement of reasons (1 of redacted records, from the columns retention keeps, "
        "dated by their decision)" in err
    )


def test_batches_in_summary(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store_records(env["db"], [record(event_id=f"b-{i}", decided_at=at(i)) for i in range(1001)])
    code, statements, err = export(capsys)
    assert code == 0, err
    assert len(statements) == 1001  # more than one store page
    assert len({s["puid"] for s in statements}) == 1001
    assert "in 11 batches of at most 100" in err


def test_missing_salt(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODERATOR_DSA_PUID_SALT")
    code, lines, err = export(capsys)
    assert (code, lines) == (2, [])
    assert "set MODERATOR_DSA_PUID_SALT" in err
    monkeypatch.setenv("OTHER_SALT", "short")
    code, lines, err = export(capsys, "--salt-env", "OTHER_SALT")
    assert code == 2 and "at least 16 characters" in err
    assert err.startswith("moderator: OTHER_SALT: too short;") and err.count("\n") == 1
    assert "short" not in err.removeprefix("moderator: OTHER_SALT: too short")  # a secret


def test_a_short_salt_names_the_variable(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", "short")
    code, lines, err = export(capsys)
    assert (code, lines) == (2, [])
    assert err == (
        "moderator: MODERATOR_DSA_PUID_SALT: too short; the PUID salt needs at least 16 "
        "characters\n"
    )


def test_nothing_is_exported_with_zero_rows_in_plural(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = export(capsys)
    assert (code, lines) == (0, []), err
    assert "0 statements of reasons (schema 2025-07-01) in 0 batches of at most 100" in err
    assert "0 reviews that keep the content visible" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: not an ISO 8601 time"),
        (["--until", "9999-12-31T23:59:59-23:59"], "--until: out of range"),
        (["--tenant", "acme\x00"], "--tenant: expected a tenant id"),
        (["--territorial-scope", "DE,CH"], "--territorial-scope: 'CH'"),
        (
            ["--territorial-scope", "XX"],
            "--territorial-scope: 'XX' is not an EEA country code; use EU, EEA or codes from "
            "AT, BE, BG,",
        ),
        (["--territorial-scope", "EU,NO,XX"], ", IS, IT, LI, LT, LU, LV, MT, NL, NO, PL,"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--until: must be later than --since"),
        (["--since", "2026-02-01", "--until", "2026-02-01"], "--until: must be later than --since"),
        (["--content-language", "german"], "--content-language: 'GERMAN' is not one of"),
    ],
)
def test_bad_flags(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    store_records(env["db"], [record()])
    code, lines, err = export(capsys, *args)
    assert (code, lines) == (2, []), err
    assert message in err


def test_unknown_tenant_fails_and_writes_nothing(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_records(env["db"], [record(), record(event_id="e-x", tenant="gone", decided_at=at(1))])
    target = env["tmp"] / "sor.jsonl"
    code, lines, err = export(capsys, "--output", str(target))
    assert (code, lines) == (1, [])
    assert "event e-x (tenant gone): no policy file" in err
    assert not target.exists()
    assert list(env["tmp"].glob(".sor.jsonl*")) == []


def test_an_unknown_tenant_error_verdict_is_skipped_not_fatal(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown_tenant error verdict always belongs to a tenant with no policy file: it yields
    no statement whatever the mapping, so it must not stop a platform-wide export."""
    gone = record(category=None, error=ErrorCode.UNKNOWN_TENANT, event_id="e-u", tenant="gone")
    store_records(env["db"], [record(), gone])
    code, lines, err = export(capsys)
    assert code == 0, err
    assert len(lines) == 1
    assert "1 error decision about no content of the tenant" in err


def test_invalid_mapping_is_an_error(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (env["policies"] / "kids.yaml").write_text(
        "dsa:\n  categories:\n    O4: STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT\n"
    )
    store_records(env["db"], [record(tenant="kids")])
    code, lines, err = export(capsys)
    # A configuration error, met with the tenant's first row: nothing is written.
    assert (code, lines) == (2, [])
    assert "kids.yaml:3: dsa.categories.O4: O4 maps to" in err
    assert "not a DSA statement category" in err and err.count("\n") == 1


def test_stdout_holds_only_statements_in_a_real_process(env: dict[str, Path]) -> None:
    """Run as a shell would (nothing configured logging first): every stdout line is a valid
    statement, and the summary and any log line go to stderr."""
    store_records(env["db"], mixed())
    command = [sys.executable, "-m", "moderator.cli.main", "audit", "export-dsa"]
    done = subprocess.run(
        command, env=dict(os.environ), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert validate_statement(json.loads(line)) == [], line
    assert "4 statements of reasons" in done.stderr


def test_a_tenant_file_that_does_not_load_stops_only_an_export_of_its_rows(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (env["policies"] / "kids.yaml").write_text("on_error: block\non_error: allow\n")
    store_records(env["db"], mixed())
    code, statements, err = export(capsys, "--tenant", "acme")
    assert code == 0, err
    assert len(statements) == 3
    code, statements, err = export(capsys)
    assert (code, statements) == (2, [])
    assert "kids.yaml:2: duplicate key 'on_error'" in err and err.count("\n") == 1


def test_the_output_is_written_through_no_planted_link(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store_records(env["db"], mixed())
    victim = env["tmp"] / "victim.txt"
    victim.write_text("keep me\n")
    target = env["tmp"] / "sor.jsonl"
    (env["tmp"] / f".sor.jsonl.{os.getpid()}.tmp").symlink_to(victim)  # the old, guessable name
    code, _, err = export(capsys, "--output", str(target))
    assert code == 0, err
    assert victim.read_text() == "keep me\n"
    assert not target.is_symlink() and len(target.read_text().splitlines()) == 4
    assert target.stat().st_mode & 0o077 == 0  # statements are for the platform's own eyes


def test_where_the_demo_ran_its_bundled_policies_map_its_decisions_only(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.cli.explain import bundled_demo_documents

    # `moderator demo`'s folder: policies.dir at its default, and no such folder there.
    monkeypatch.delenv("MODERATOR_POLICIES__DIR")
    monkeypatch.chdir(env["tmp"] / "policies")
    demo_acme = next(v for v, d in bundled_demo_documents().items() if d["tenant_id"] == "acme")
    demo = record(event_id="e-demo", surface="default")
    demo["verdict"]["policy"]["version"] = demo_acme
    store_records(env["db"], [demo])
    code, [statement], err = export(capsys)
    assert code == 0, err
    assert statement["puid"] == puid_for("acme", "e-demo", SALT)
    assert "the bundled demo policies map the decisions `moderator demo` made" in err
    # A decision the demo did not make: its policy is not among the bundled ones.
    own = IncomingRecord("moderation.audit", 0, 1, record(event_id="e-own", decided_at=at(1)))
    with AuditStore.open(f"sqlite:///{env['db']}") as store:
        assert store.insert([own]).inserted == 1
    code, statements, err = export(capsys)
    assert (code, statements) == (2, [])
    assert err.splitlines()[-1] == (
        "moderator: policies.dir: policies is not a directory, and the bundled demo policies map "
        "only the demo's decisions: event e-own (tenant acme) was decided under policy version "
        "6c1f8e8704d0b0c9 (pass --policies)"
    )
