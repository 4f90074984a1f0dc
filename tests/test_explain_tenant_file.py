"""`moderator explain` where policies.dir has no file for the verdict's tenant, and for an event
id the audit store has no record of."""

from __future__ import annotations

import json
import shutil
from importlib.resources import as_file, files
from pathlib import Path

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.policy.check import check
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import audit_record, demo, unsafe

ROOT = Path(__file__).resolve().parent.parent
DEMO = files("moderator") / "data" / "demo-policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A policy directory without kidsplace.yaml (as the repository's policies/)."""
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", directory / "default.yaml")
    (directory / "acme.yaml").write_text("on_error: block\n", encoding="utf-8")
    return directory


@pytest.fixture
def store_url(tmp_path: Path, policies: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    clear_moderator_env(monkeypatch)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", url)
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    AuditStore.open(url).close()
    return url


def stored(url: str, record: dict[str, object]) -> None:
    with AuditStore.open(url) as store:
        assert store.insert([IncomingRecord("moderation.audit", 0, 0, record)]).inserted == 1


def origin(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["explain", *args]) == 0
    out = capsys.readouterr().out
    return next(line[11:] for line in out.splitlines() if line.startswith("origin"))


def test_a_demo_verdict_says_its_tenant_has_no_file_and_names_the_demo_policies(
    store_url: str, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored(store_url, audit_record("k-1", demo("kidsplace"), assessment=unsafe("O6", 0.9821)))
    assert origin(capsys, "k-1") == (
        f"not shown: policies.dir ({policies}) has no policy file for kidsplace; "
        f"`moderator demo` decided it under its bundled policies: pass --policies {DEMO}"
    )
    assert main(["explain", "k-1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["missing"] == [
        f"row origin: policies.dir ({policies}) has no policy file for kidsplace; "
        f"`moderator demo` decided it under its bundled policies: pass --policies {DEMO}"
    ]
    assert origin(capsys, "k-1", "--policies", str(DEMO)).startswith("O6 mode and action")


def test_another_verdict_says_its_tenant_has_no_file_and_asks_for_its_version(
    store_url: str, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with as_file(DEMO) as found:
        changed = Path(shutil.copytree(found, tmp_path / "changed"))
    path = changed / "kidsplace.yaml"
    path.write_text(path.read_text().replace("review_at: 0.2}", "review_at: 0.25}"))
    policy = check(changed, TenancySettings()).policies[("kidsplace", "default")]
    stored(store_url, audit_record("k-2", policy, assessment=unsafe("O6", 0.9821)))
    assert origin(capsys, "k-2") == (
        f"not shown: policies.dir ({policies}) has no policy file for kidsplace; pass "
        f"--policies DIR holding the policies of version {policy.version}"
    )


def test_a_tenant_with_a_file_of_another_version_still_names_both_versions(
    store_url: str, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (policies / "kidsplace.yaml").write_text("on_error: review\n", encoding="utf-8")
    stored(store_url, audit_record("k-3", demo("kidsplace"), assessment=unsafe("O6", 0.9821)))
    shown = origin(capsys, "k-3")
    assert shown.startswith(f"not shown: policies.dir ({policies}) compiles kidsplace/post to ")
    assert "has no policy file" not in shown


def test_an_event_without_a_record_says_a_malformed_message_gets_none(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "b1-bad"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"moderator: no audit record for event 'b1-bad' in {store_url}; a message that could "
        "not be parsed gets none: it goes to the DLQ topic (kafka.topics.dlq), whose records "
        "name its source partition and offset, not an event id\n"
    )
