"""`audit export-dsa` and tenants: one without a policy file says what to pass, and a `--tenant`
the audit store has no record of is warned about, as `replay --tenant` does."""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.cli.explain import bundled_demo_documents
from moderator.cli.main import main
from tests.dsa_fixtures import record
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "tenants-salt-0123456789ab"
DEMO = files("moderator") / "data" / "demo-policies"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A policy directory with default.yaml and acme.yaml only (the demo's kidsplace is not
    there, as in the repository's own policies/), and an empty audit store."""
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "acme.yaml").write_text("on_error: block\n")
    db = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{db}")
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    monkeypatch.chdir(tmp_path)  # policies.dir left at its default: ./policies, which exists
    AuditStore.open(f"sqlite:///{db}").close()
    return {"db": db, "policies": policies}


def store(db: Path, records: list[dict[str, Any]]) -> None:
    items = [IncomingRecord("moderation.audit", 0, i, r) for i, r in enumerate(records)]
    with AuditStore.open(f"sqlite:///{db}") as opened:
        assert opened.insert(items).inserted == len(records)


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    code = main(["audit", "export-dsa", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def demo_record() -> dict[str, Any]:
    """A kidsplace block `moderator demo` decided, under its bundled kidsplace policy."""
    version = next(v for v, d in bundled_demo_documents().items() if d["tenant_id"] == "kidsplace")
    rec = record(event_id="demo-1a2b3c4d-0001", tenant="kidsplace", surface="default")
    rec["verdict"]["policy"]["version"] = version
    return rec


def test_a_demo_decision_without_its_tenant_file_names_the_demo_policies(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store(env["db"], [demo_record()])
    code, lines, err = export(capsys)
    assert (code, lines) == (1, [])
    assert err == (
        "moderator: event demo-1a2b3c4d-0001 (tenant kidsplace): no policy file for the tenant "
        "in policies, so its DSA mapping is unknown; `moderator demo` decided it under its "
        f"bundled policies: pass --policies {DEMO}\n"
    )
    code, [statement], err = export(capsys, "--policies", str(DEMO))
    assert code == 0, err
    assert statement["category"].startswith("STATEMENT_CATEGORY_")


def test_another_decision_without_its_tenant_file_asks_for_a_directory_holding_it(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store(env["db"], [record(event_id="e-1", tenant="gone")])
    code, lines, err = export(capsys)
    assert (code, lines) == (1, [])
    assert err.endswith(
        "(tenant gone): no policy file for the tenant in policies, so its DSA mapping is "
        "unknown; pass --policies DIR holding the tenant's policy file\n"
    )


def test_a_tenant_the_store_has_no_record_of_is_warned_about(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store(env["db"], [record(event_id="e-1"), record(event_id="e-2", tenant="kids")])
    code, lines, err = export(capsys, "--tenant", "nosuch")
    assert (code, lines) == (0, [])
    assert "0 statements of reasons" in err
    assert err.splitlines()[-1] == (
        "moderator: warning: --tenant nosuch: the audit store has no record of this tenant; "
        "tenants in the store: acme, kids"
    )


def test_a_tenant_with_records_but_nothing_to_report_is_not_warned_about(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store(env["db"], [record("allow", event_id="e-1")])
    code, lines, err = export(capsys, "--tenant", "acme")
    assert (code, lines) == (0, [])
    assert "warning" not in err
    store(env["db"], [record(event_id="e-2")])
    code, lines, err = export(capsys, "--tenant", "acme")
    assert (code, len(lines)) == (0, 1)
    assert "warning" not in err
