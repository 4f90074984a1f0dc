"""A tenant's policy after inheritance and surface overrides: every field filled in. Pure.

`ResolvedPolicy` is what the prompt renderer and the decision table are compiled from;
`to_json` is its canonical form for display and diffs (the version hashes only what can change a
decision: see compiled.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from moderator.policy.document import Action, Mode


@dataclass(frozen=True)
class ResolvedCategory:
    code: str  # "O1".."O9"
    name: str  # the taxonomy string, e.g. "O1: Hate, Humiliation, Harassment"
    mode: Mode
    action: Action  # what an Unsafe rating in this category leads to (before thresholds)
    block_at: float | None
    review_at: float | None
    should_not: tuple[str, ...]
    can: tuple[str, ...]
    allowed_text: str
    sensitive_text: str


@dataclass(frozen=True)
class ResolvedNoneApplying:
    """An Unsafe rating with `NA: None applying`, and the tenant-wide score thresholds."""

    action: Action
    block_at: float | None
    review_at: float | None


@dataclass(frozen=True)
class ResolvedPolicy:
    tenant_id: str
    surface: str  # "default" when no surface override applies
    chain: tuple[str, ...]  # files from the tenant up to the default, e.g. ("kids", "default")
    categories: tuple[ResolvedCategory, ...]  # O1..O9 in order
    none_applying: ResolvedNoneApplying
    on_error: Mapping[str, Action]  # error code -> action, plus "default"
    buckets: tuple[str, ...]
    prefixes: tuple[str, ...]  # empty = any key in the buckets
    dsa_categories: Mapping[str, str]
    review_restricts_visibility: bool
    description: str | None
    owner: str | None

    def category(self, code: str) -> ResolvedCategory:
        for category in self.categories:
            if category.code == code:
                return category
        raise KeyError(code)

    def to_json(self) -> dict[str, Any]:
        """Canonical, JSON-ready form (sorted maps, lists for tuples)."""
        doc = asdict(self)
        doc["on_error"] = dict(sorted(self.on_error.items()))
        doc["dsa_categories"] = dict(sorted(self.dsa_categories.items()))
        return doc
