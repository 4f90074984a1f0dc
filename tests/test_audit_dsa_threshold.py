"""DSA statements of decisions a score threshold took: they name the score and the threshold.

With a score and score thresholds the score decides whatever the rating, so an image the model
rated Safe, in no category, is blocked when its score reaches the row's `block_at`. Its public
statement must say that, not that the image fell under content the policy does not allow.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.dsa.export import (
    DsaExportError,
    DsaOptions,
    TenantDsa,
    statement_for,
    validate_statement,
)
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.policy.check import check
from moderator.policy.compiled import TenantPolicy
from moderator.settings import TenancySettings
from tests.dsa_fixtures import record
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "threshold-salt-0123456789"
OPTIONS = DsaOptions(puid_salt=SALT)
KIDS = """\
dsa:
  review_restricts_visibility: true
categories:
  O6: {mode: sensitive, action: block, block_at: 0.5, review_at: 0.2}
surfaces:
  profile_photo:
    none_applying: {action: block, block_at: 0.3, review_at: 0.1}
"""
UNSUPPORTED = "content the policy does not allow"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", directory / "default.yaml")
    (directory / "kids.yaml").write_text(KIDS, encoding="utf-8")
    return directory


def compiled(directory: Path, surface: str = "profile_photo") -> TenantPolicy:
    return check(directory, TenancySettings()).policies[("kids", surface)]


def mapping(policy: TenantPolicy) -> TenantDsa:
    resolved = policy.resolved
    surfaces = frozenset({"default", "profile_photo"})
    return TenantDsa(resolved.dsa_categories, resolved.review_restricts_visibility, surfaces)


def decided(
    policy: TenantPolicy,
    decision: str,
    category: str,
    rating: str,
    score: float | None,
    **fields: Any,
) -> dict[str, Any]:
    """A kids record decided under `policy`, carrying its compiled document, as stored."""
    rec = record(decision, category=category, tenant="kids", **fields)
    verdict = rec["verdict"]
    verdict["assessment"].update(rating=rating, score=score)
    verdict["policy"]["version"] = policy.version
    verdict["model"] = {"engine": "fake", "name": "fake", "smoke_test": True}
    rec["policy_hash"] = policy.full_hash
    rec["policy_document"] = policy.document()
    return rec


def build(rec: dict[str, Any], policy: TenantPolicy) -> dict[str, Any]:
    statement = statement_for(rec, mapping(policy), OPTIONS)
    assert statement is not None
    assert validate_statement(statement) == []
    return statement


def test_a_safe_image_blocked_by_its_score_is_said_to_be_so(policies: Path) -> None:
    policy = compiled(policies)
    s = build(decided(policy, "block", "NA: None applying", "Safe", 0.3043), policy)
    why, facts = s["incompatible_content_explanation"], s["decision_facts"]
    for text in (why, facts):
        assert UNSUPPORTED not in text and "falling under" not in text
        assert "rated the image safe and named no specific category of the policy" in text
        assert "a score of 0.3043" in text
        assert "images for which no specific category is named at a score of 0.3 or more" in text
    assert "The model rated the image safe" in facts
    assert "The policy blocks images" in facts
    assert "'profile_photo' upload surface" in facts
    assert "blocked automatically, without review by a person" in facts


def test_a_review_that_hides_by_score_names_review_at(policies: Path) -> None:
    policy = compiled(policies)
    s = build(decided(policy, "review", "NA: None applying", "Safe", 0.2), policy)
    assert s["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_DISABLED"]
    assert (
        "the policy hides images for which no specific category is named at a score of 0.1 or "
        "more until a moderator has reviewed them" in s["incompatible_content_explanation"]
    )
    assert "rated the image safe" in s["decision_facts"]


def test_an_unsafe_category_decided_by_score_names_its_threshold(policies: Path) -> None:
    policy = compiled(policies, "default")
    rec = decided(policy, "block", "O6: Weapons or Substance Abuse", "Unsafe", 0.9821)
    s = build(rec, policy)
    assert (
        'rated the image unsafe and placed it under the policy category "Weapons or Substance '
        'Abuse" (O6), giving it a score of 0.9821' in s["incompatible_content_explanation"]
    )
    assert (
        "The policy blocks images in that category at a score of 0.5 or more."
        in (s["decision_facts"])
    )
    cached = build(dict(rec, verdict={**rec["verdict"], "source": "cache"}), policy)
    assert "The assessment rated the image unsafe" in cached["decision_facts"]


def test_where_the_rating_decided_the_category_is_named_without_a_score(policies: Path) -> None:
    policy = compiled(policies, "default")  # O4: no thresholds in default.yaml's kids chain
    table = policy.document()["decision_table"]["categories"]["O4"]
    assert table["block_at"] is None and table["review_at"] is None
    s = build(decided(policy, "block", "O4: Nudity Content", "Unsafe", 0.9), policy)
    assert (
        'The model placed the image under the policy category "Nudity Content" (O4).'
        in (s["decision_facts"])
    )
    assert "score" not in s["decision_facts"] + s["incompatible_content_explanation"]


def test_without_its_policy_document_a_safe_rating_is_still_not_called_disallowed(
    policies: Path,
) -> None:
    policy = compiled(policies)
    rec = decided(policy, "block", "NA: None applying", "Safe", 0.3043)
    rec["policy_document"] = None
    s = build(rec, policy)
    assert UNSUPPORTED not in s["incompatible_content_explanation"]
    assert (
        "that score reached the policy's threshold for blocking such images"
        in (s["incompatible_content_explanation"])
    )
    rec["verdict"]["assessment"]["score"] = None  # no rule restricts Safe without a score
    with pytest.raises(DsaExportError, match="rated Safe without a score, yet restricted"):
        statement_for(rec, mapping(policy), OPTIONS)


def test_a_table_that_gives_another_decision_is_not_quoted(policies: Path) -> None:
    policy = compiled(policies, "default")
    rec = decided(policy, "block", "O6: Weapons or Substance Abuse", "Unsafe", 0.1)  # table: allow
    s = build(rec, policy)
    assert "score" not in s["decision_facts"]
    assert '"Weapons or Substance Abuse" (O6)' in s["decision_facts"]


def test_the_export_and_a_redacted_row_say_it_too(
    policies: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`audit export-dsa --include-smoke-test --event-id ID`, before and after retention: the
    redacted row's statement reads the rule from the policy version the store keeps."""
    clear_moderator_env(monkeypatch)
    db = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{db}")
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    policy = compiled(policies)
    rec = decided(policy, "block", "NA: None applying", "Safe", 0.3043, event_id="b2-0011")
    with AuditStore.open(f"sqlite:///{db}") as store:
        assert store.insert([IncomingRecord("moderation.audit", 0, 0, rec)]).inserted == 1
    args = ["audit", "export-dsa", "--include-smoke-test", "--event-id", "b2-0011"]
    assert main(args) == 0
    [whole] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "a score of 0.3043" in whole["incompatible_content_explanation"]
    assert "at a score of 0.3 or more" in whole["incompatible_content_explanation"]
    with AuditStore.open(f"sqlite:///{db}") as store:
        now = datetime.now(UTC)
        store.redact(now, now, tenant_ids=["kids"])
    assert main(args) == 0
    out, err = capsys.readouterr()
    [kept] = [json.loads(line) for line in out.splitlines()]
    assert "1 of redacted records" in err
    assert kept["incompatible_content_explanation"] == whole["incompatible_content_explanation"]
    assert "at a score of 0.3 or more" in kept["decision_facts"]
