"""`dataset build`'s core: labelled images -> train / eval / test splits, augmented. Pure.

The originals are split first, stratified by (category, rating) and seeded, so an image and every
variant made of it land in the same split. Each split then gets the originals under the base
policy and, with augmentation, their variants (augment.py). With oversampling, the originals of
the smaller (category, rating) groups of the training split are repeated until each group is as
large as the largest (at most MAX_OVERSAMPLE times its own size). build.json summarises the
result (`summary`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moderator.errors import ConfigError
from moderator.events.verdict import CATEGORIES
from moderator.training.augment import Variant, Variants, augment, original
from moderator.training.dataset import AUGMENTATIONS, OVERSAMPLED, RATINGS, Sample

SPLITS = ("train", "eval", "test")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
MAX_OVERSAMPLE = 10
"""Oversampling repeats a group's originals to at most this many times the group's size."""
SCHEMA = "moderator.dataset-build/v1"

T = TypeVar("T")


@dataclass(frozen=True)
class BuildOptions:
    ratios: tuple[float, float, float] = DEFAULT_SPLIT
    seed: int = 0
    augment: bool = False
    oversample: bool = False


@dataclass
class Built:
    """The splits (name -> samples, in manifest order, each original followed by its variants;
    oversampled copies last) and what made them."""

    splits: dict[str, list[Sample]]
    variants: list[Variant]
    relabelled: int = 0  # originals whose label the base policy changes
    counts: dict[str, int] = field(default_factory=dict)  # samples made by each rule


def parse_split(text: str) -> tuple[float, float, float]:
    """`0.8,0.1,0.1` -> the train, eval and test shares: three numbers >= 0 summing to 1.
    ConfigError saying which rule the text breaks."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ConfigError(
            f"--split: expected three shares (train,eval,test) like 0.8,0.1,0.1, "
            f"got {len(parts)} in {text!r}"
        )
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = (math.nan,)
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--split: the shares must be numbers like 0.8,0.1,0.1, got {text!r}")
    negative = [f"{name} {v:g}" for name, v in zip(SPLITS, values, strict=True) if v < 0]
    if negative:
        raise ConfigError(f"--split: a share cannot be negative: {', '.join(negative)}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"--split: the shares must add up to 1, not {sum(values):g}")
    return values[0], values[1], values[2]


def stratified_split(
    items: Sequence[T],
    key: Callable[[T], Hashable],
    ratios: Sequence[float],
    rng: random.Random,
) -> list[list[T]]:
    """`items` dealt into len(ratios) parts. Items are grouped by `key`, the groups taken in
    an order `rng` draws (so the seed decides which group's leftover item goes to which part,
    not the groups' names), shuffled within each group, and dealt one by one to the part
    furthest behind its share, so each group and the whole are split within about one item of
    the ratios. Each part keeps the input order."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[key(item)].append(index)
    parts: list[list[int]] = [[] for _ in ratios]
    dealt = 0
    order = sorted(groups, key=repr)
    rng.shuffle(order)
    for group in order:
        members = groups[group]
        rng.shuffle(members)
        for index in members:
            dealt += 1
            behind = [dealt * share - len(part) for share, part in zip(ratios, parts, strict=True)]
            parts[max(range(len(parts)), key=lambda p: (behind[p], -p))].append(index)
    return [[items[i] for i in sorted(part)] for part in parts]


def build_splits(samples: Sequence[Sample], variants: Variants, options: BuildOptions) -> Built:
    """Split the originals (labelled under the default guidelines, no prompt yet), put each
    under the base policy, augment and oversample as `options` say."""
    split_rng = random.Random(f"{options.seed}:split")
    augment_rng = random.Random(f"{options.seed}:augment")
    parts = stratified_split(samples, lambda s: (s.category, s.rating), options.ratios, split_rng)
    built = Built(splits={}, variants=[], counts=dict.fromkeys(AUGMENTATIONS, 0))
    for name, part in zip(SPLITS, parts, strict=True):
        out: list[Sample] = []
        for sample in part:
            base = original(sample, variants)
            built.relabelled += base.rating != sample.rating
            out.append(base)
            if options.augment:
                for extra in augment(sample, variants, augment_rng):
                    built.counts[extra.augmented or ""] += 1
                    out.append(extra)
        built.splits[name] = out
    if options.oversample:
        copies = oversample(built.splits["train"], random.Random(f"{options.seed}:oversample"))
        built.splits["train"].extend(copies)
        built.counts[OVERSAMPLED] = len(copies)
    built.variants = variants.made()
    return built


def oversample(
    samples: Sequence[Sample], rng: random.Random, cap: int = MAX_OVERSAMPLE
) -> list[Sample]:
    """Copies of originals that bring every (category, rating) group of originals up to the
    largest group's size, or to `cap` times its own size if that is less. Whole rounds of the
    group first, then a seeded choice for the rest; copy k of sample X has id `X_copyk`."""
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.augmented is None:
            groups[(sample.category, sample.rating)].append(sample)
    if not groups:
        return []
    largest = max(len(group) for group in groups.values())
    copies: list[Sample] = []
    for key in sorted(groups):
        group = groups[key]
        wanted = min(largest, cap * len(group)) - len(group)
        rounds, rest = divmod(wanted, len(group))
        picked = [*(group * rounds), *rng.sample(group, rest)]
        made: Counter[str] = Counter()
        for sample in picked:
            made[sample.id] += 1
            copies.append(
                dataclasses.replace(
                    sample, id=f"{sample.id}_copy{made[sample.id]}", augmented=OVERSAMPLED
                )
            )
    return copies


def summary(built: Built, options: BuildOptions, **extra: Any) -> dict[str, Any]:
    """build.json: the options, the policies used, the counts per split, category and rating,
    and what each augmentation rule made; `extra` adds keys (manifest, bad rows...)."""
    return {
        "schema": SCHEMA,
        **extra,
        "seed": options.seed,
        "split": dict(zip(SPLITS, options.ratios, strict=True)),
        "augment": options.augment,
        "oversample": options.oversample,
        "base_policy": built.variants[0].name if built.variants else None,
        "policies": {
            v.name: {"version": v.policy.version, "prompt_sha256": v.policy.prompt_sha256}
            for v in built.variants
        },
        "relabelled_by_base_policy": built.relabelled,
        "augmentation": dict(built.counts),
        "counts": {name: split_counts(samples) for name, samples in built.splits.items()},
    }


def split_counts(samples: Sequence[Sample]) -> dict[str, Any]:
    """Samples in all, by rating, by category (and rating within it) and by rule."""
    by_category: dict[str, dict[str, int]] = {}
    for category in CATEGORIES:
        found = Counter(s.rating for s in samples if s.category == category)
        if found:
            by_category[category] = {rating: found[rating] for rating in RATINGS}
    ratings = Counter(s.rating for s in samples)
    rules = Counter(s.augmented or "original" for s in samples)
    return {
        "samples": len(samples),
        "rating": {rating: ratings[rating] for rating in RATINGS},
        "category": by_category,
        "augmented": {rule: rules[rule] for rule in ("original", *AUGMENTATIONS) if rules[rule]},
    }
