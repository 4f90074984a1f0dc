"""Cells of `audit query` that no column of the row holds: the model's rationale (from the
record) and `because`, the rule that decided (the explain core), flagged when the rule gives
another decision than the one recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditRow


class PolicyDocuments:
    """The compiled policy document each row was decided under: its record's own, else (a
    redacted row) the policy version the store keeps, read once per policy version."""

    def __init__(self, policy_version: Callable[[str], dict[str, Any] | None]) -> None:
        self._policy_version = policy_version
        self._kept: dict[str, dict[str, Any] | None] = {}

    def __call__(self, row: AuditRow) -> dict[str, Any] | None:
        found = (row.record or {}).get("policy_document")
        if isinstance(found, dict):
            return found
        if not row.policy_hash:
            return None
        if row.policy_hash not in self._kept:
            self._kept[row.policy_hash] = self._policy_version(row.policy_hash)
        return self._kept[row.policy_hash]


class RowExtras:
    """The rationale and `because` cells of rows of one store, each policy version's document
    read once."""

    def __init__(self, store: AuditStore) -> None:
        self._documents = PolicyDocuments(store.policy_version)

    def rationale(self, row: AuditRow) -> str | None:
        assessment = ((row.record or {}).get("verdict") or {}).get("assessment") or {}
        found = assessment.get("rationale") if isinstance(assessment, dict) else None
        return found if isinstance(found, str) else None

    def because(self, row: AuditRow) -> str:
        """`score 0.9461 >= block 0.5`; with `; MISMATCH: recorded allow` where the policy's
        rule gives another decision than the row records (explain's `mismatch` step)."""
        from moderator.explain.build import explain_row
        from moderator.explain.render import because

        explanation = explain_row(row, self._documents(row))
        text = because(explanation)
        if explanation.matches_policy is False:
            text += f"; MISMATCH: recorded {explanation.decision}"
        return text
