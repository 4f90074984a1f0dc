"""The seed decides which group's leftover image goes to which split: on a small manifest the
eval and test splits are not always given the same group's images."""

from __future__ import annotations

import random
from collections import Counter

from moderator.training.build import stratified_split

RATIOS = (0.8, 0.1, 0.1)
ITEMS = [(n, "Safe" if n < 13 else "Unsafe") for n in range(26)]  # 13 of each


def placements(seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    _, evaluation, test = stratified_split(ITEMS, lambda i: i[1], RATIOS, random.Random(seed))
    return tuple(sorted(i[1] for i in evaluation)), tuple(sorted(i[1] for i in test))


def test_different_seeds_place_the_groups_differently() -> None:
    seen = {placements(seed) for seed in range(20)}
    assert len(seen) > 1, seen
    evals = {rating for evaluation, _ in seen for rating in evaluation}
    tests = {rating for _, test in seen for rating in test}
    assert evals == tests == {"Safe", "Unsafe"}  # neither split is always one group's


def test_the_same_seed_places_them_the_same_and_within_one_per_group() -> None:
    assert placements(7) == placements(7)
    for seed in range(20):
        parts = stratified_split(ITEMS, lambda i: i[1], RATIOS, random.Random(seed))
        assert sorted(i for part in parts for i in part) == ITEMS
        for share, part in zip(RATIOS, parts, strict=True):
            assert abs(len(part) - share * len(ITEMS)) <= 1
            got = Counter(i[1] for i in part)
            for group in ("Safe", "Unsafe"):
                assert abs(got[group] - share * 13) < 2, (seed, group, share)
