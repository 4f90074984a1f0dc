"""Policy augmentation: a labelled image under policy variants, labelled by the variant. Pure.

A sample's label (rating, category) says how the image is judged under the default guidelines.
A policy puts each category O1..O9 in one of three states (docs/policies.md): `default`,
`allowed` (declared non-violating) or `sensitive` (declared fully prohibited). Under a policy the
expected rating follows from the state of the sample's category:

    Unsafe, category allowed            -> Safe      (a policy exception)
    Safe,   category sensitive          -> Unsafe    (a policy exception)
    otherwise                           -> unchanged (`NA: None applying` is always Safe)

Augmentation makes, from one original, up to three variants of its base policy, each compiled
by the service's own policy compiler (moderator/policy/compiled.py), so every prompt is exactly
what the service would send for that policy:

    violated_allowed  an Unsafe sample, its own category declared allowed -> Safe
    other_allowed     an Unsafe sample, one to three other categories declared allowed -> kept
    safe_sensitive    a Safe sample with a category O1..O9, that category declared sensitive
                      -> Unsafe
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

from moderator.events.verdict import NONE_APPLYING, Rating, category_code
from moderator.policy.compiled import TenantPolicy, compile_policy
from moderator.policy.document import CODES, Action, Mode
from moderator.policy.model import ResolvedCategory
from moderator.training.dataset import (
    OTHER_ALLOWED,
    SAFE_SENSITIVE,
    VIOLATED_ALLOWED,
    Sample,
)

MAX_OTHER_ALLOWED = 3
"""other_allowed declares between one and this many other categories allowed."""

MODE_ACTION: Mapping[Mode, Action] = {"default": "block", "sensitive": "block", "allowed": "allow"}
"""A category's action in a variant: what a policy file that sets only the mode resolves to
(moderator/policy/resolve.py), so a variant compiles exactly like such a file."""

SUFFIXES: Mapping[str, str] = {
    VIOLATED_ALLOWED: "_allowed",
    OTHER_ALLOWED: "_other_allowed",
    SAFE_SENSITIVE: "_sensitive",
}
"""What each rule appends to the original's id."""


def modes_of(policy: TenantPolicy) -> dict[str, Mode]:
    """Category code -> state, for O1..O9."""
    return {category.code: category.mode for category in policy.resolved.categories}


def expected_rating(rating: Rating, category: str, modes: Mapping[str, Mode]) -> Rating:
    """The rating a sample labelled `rating` (under the default guidelines) has under a policy
    whose category states are `modes`."""
    if category == NONE_APPLYING:
        return rating
    mode = modes[category_code(category)]
    if rating == "Unsafe" and mode == "allowed":
        return "Safe"
    if rating == "Safe" and mode == "sensitive":
        return "Unsafe"
    return rating


@dataclass(frozen=True)
class Variant:
    """A base policy with some categories put in another state, compiled."""

    name: str  # `base+O4:allowed,O7:allowed`; the base's name when nothing changed
    policy: TenantPolicy


class Variants:
    """Compiles the variants of one base policy, each once."""

    def __init__(self, base: TenantPolicy, name: str) -> None:
        self.base = Variant(name, base)
        self._modes = modes_of(base)
        self._made: dict[tuple[tuple[str, Mode], ...], Variant] = {}

    @property
    def modes(self) -> Mapping[str, Mode]:
        return self._modes

    def get(self, changes: Mapping[str, Mode]) -> Variant:
        """The base with `changes` (code -> state) applied; the base itself for no change."""
        key = tuple(sorted((c, m) for c, m in changes.items() if self._modes[c] != m))
        if not key:
            return self.base
        if key not in self._made:
            resolved = self.base.policy.resolved
            changed = dict(key)
            categories = tuple(
                _with_mode(cat, changed[cat.code]) if cat.code in changed else cat
                for cat in resolved.categories
            )
            policy = compile_policy(dataclasses.replace(resolved, categories=categories))
            label = ",".join(f"{code}:{mode}" for code, mode in key)
            self._made[key] = Variant(f"{self.base.name}+{label}", policy)
        return self._made[key]

    def made(self) -> list[Variant]:
        """The base, then every variant compiled so far, by name."""
        return [self.base, *sorted(self._made.values(), key=lambda v: v.name)]


def _with_mode(category: ResolvedCategory, mode: Mode) -> ResolvedCategory:
    return dataclasses.replace(category, mode=mode, action=MODE_ACTION[mode])


def original(sample: Sample, variants: Variants) -> Sample:
    """The sample under the base policy: its prompt, and its rating as the base decides it."""
    base = variants.base
    rating = expected_rating(sample.rating, sample.category, variants.modes)
    return dataclasses.replace(
        sample,
        rating=rating,
        policy=base.name,
        prompt=base.policy.prompt,
        rationale=sample.rationale if rating == sample.rating else None,
    )


def augment(sample: Sample, variants: Variants, rng: random.Random) -> list[Sample]:
    """The variants the rules make of one original (labelled under the default guidelines):
    none, one or two. Variants whose label changes lose the rationale (it argued for the other
    label); `moderator dataset rationales` writes new ones."""
    if sample.category == NONE_APPLYING:
        return []
    code = category_code(sample.category)
    mode = variants.modes[code]
    made: list[tuple[str, Variant]] = []
    if sample.rating == "Unsafe" and mode != "allowed":
        made.append((VIOLATED_ALLOWED, variants.get({code: "allowed"})))
        others = [c for c in CODES if c != code and variants.modes[c] != "allowed"]
        if others:
            count = rng.randint(1, min(MAX_OTHER_ALLOWED, len(others)))
            chosen = rng.sample(others, count)
            made.append((OTHER_ALLOWED, variants.get(dict.fromkeys(chosen, "allowed"))))
    elif sample.rating == "Safe" and mode != "sensitive":
        made.append((SAFE_SENSITIVE, variants.get({code: "sensitive"})))
    out = []
    for rule, variant in made:
        rating = expected_rating(sample.rating, sample.category, modes_of(variant.policy))
        out.append(
            dataclasses.replace(
                sample,
                id=sample.id + SUFFIXES[rule],
                rating=rating,
                policy=variant.name,
                prompt=variant.policy.prompt,
                augmented=rule,
                rationale=sample.rationale if rating == sample.rating else None,
            )
        )
    return out
