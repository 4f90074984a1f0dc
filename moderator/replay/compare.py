"""What one replayed event turned out to be, beside what it was: outcomes and their pairs.

Pure: takes Verdict v1 JSON dicts (as published on `moderation.verdicts`) and returns frozen
dataclasses. A pair is *changed* when the decision differs. A replay that found the object gone
(`object_not_found`) is a *missing object* and an event whose original verdict was not found has
*no original*: both are counted apart and never as a change; a missing object is reported as such
even when the original was not found either, since nothing was judged again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from moderator.errors import ErrorCode
from moderator.events.verdict import category_code

PairKind = Literal["compared", "missing_object", "no_original"]


@dataclass(frozen=True)
class Outcome:
    """The parts of a verdict a replay report compares."""

    decision: str
    category: str | None  # the category code ("O4", "NA"); None without an assessment
    score: float | None
    policy_version: str
    error: str | None  # an ErrorCode value
    model: str | None  # "engine:name@revision" ("engine:name" without a revision)


@dataclass(frozen=True)
class Pair:
    """One replayed event: its original outcome (None when not found) and its replayed one."""

    event_id: str
    tenant: str
    surface: str
    key: str
    original: Outcome | None
    replayed: Outcome
    path: str  # how the replay decided: engine, cache, assessment or error

    @property
    def kind(self) -> PairKind:
        if self.replayed.error == ErrorCode.OBJECT_NOT_FOUND.value:
            return "missing_object"
        if self.original is None:
            return "no_original"
        return "compared"

    @property
    def changed(self) -> bool:
        return (
            self.kind == "compared"
            and self.original is not None
            and self.original.decision != self.replayed.decision
        )

    @property
    def transition(self) -> str | None:
        """`"old->new"` for a compared pair, else None."""
        if self.kind != "compared" or self.original is None:
            return None
        return f"{self.original.decision}->{self.replayed.decision}"

    @property
    def category(self) -> str | None:
        """The category a report files this pair under: the replay's, else the original's."""
        if self.replayed.category is not None:
            return self.replayed.category
        return self.original.category if self.original is not None else None

    @property
    def score_shift(self) -> float | None:
        """New score minus old score, rounded to 6 places; None unless both sides have one."""
        if self.original is None or self.original.score is None or self.replayed.score is None:
            return None
        return round(self.replayed.score - self.original.score, 6)


def outcome_of(verdict: Mapping[str, Any]) -> Outcome:
    """The outcome of a Verdict v1 dict; ValueError when a required field is missing."""
    try:
        assessment = verdict.get("assessment")
        model = verdict.get("model")
        error = verdict.get("error")
        score = assessment.get("score") if assessment else None
        return Outcome(
            decision=str(verdict["decision"]),
            category=category_code(str(assessment["category"])) if assessment else None,
            score=float(score) if score is not None else None,
            policy_version=str(verdict["policy"]["version"]),
            error=str(error["code"]) if error else None,
            model=_model_id(model) if model else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise _not_a_verdict(verdict, exc) from exc


def pair_of(original: Mapping[str, Any] | None, replayed: Mapping[str, Any]) -> Pair:
    """Pair a replayed Verdict v1 dict with its original (None when it was not found).

    The event's identity (id, tenant, surface, key) is read from the replayed verdict. A replayed
    verdict without `replay` info is taken as judged by the engine, or as an error when it has one.
    """
    outcome = outcome_of(replayed)
    replay = replayed.get("replay") or {}
    path = replay.get("path") or ("error" if outcome.error else "engine")
    try:
        return Pair(
            event_id=str(replayed["event_id"]),
            tenant=str(replayed["tenant_id"]),
            surface=str(replayed["policy"]["surface"]),
            key=str(replayed["object"]["key"]),
            original=outcome_of(original) if original is not None else None,
            replayed=outcome,
            path=str(path),
        )
    except (KeyError, TypeError) as exc:
        raise _not_a_verdict(replayed, exc) from exc


def _not_a_verdict(verdict: Mapping[str, Any], exc: Exception) -> ValueError:
    return ValueError(f"verdict {verdict.get('event_id')!r} is not a Verdict v1: {exc!r}")


def _model_id(model: Mapping[str, Any]) -> str:
    name = f"{model['engine']}:{model['name']}"
    revision = model.get("revision")
    return f"{name}@{revision}" if revision else name
