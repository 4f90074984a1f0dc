"""Score-based evaluation: ROC-AUC, average precision, calibration bins and threshold tables.

Pure: lists of (is_unsafe, score) pairs in, plain values out. A score is the engine's P(Unsafe),
0..1; a sample counts as flagged at threshold t when its score is at or above t, which is how
`block_at` and `review_at` act in a policy (docs/policies.md). A value that would divide by zero
is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Scored = tuple[bool, float]  # (the sample is Unsafe, the predicted P(Unsafe))

LEVELS = (0.8, 0.9, 0.95, 0.99)  # target precision / recall levels of the threshold table
BINS = 10  # calibration bins of equal width over 0..1


@dataclass(frozen=True)
class _Cut:
    """Counts when every score at or above `threshold` is flagged."""

    threshold: float
    tp: int
    fp: int


def check_scores(scored: Iterable[Scored]) -> None:
    """Raise ValueError on a score outside 0..1 (NaN included)."""
    for _, score in scored:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"a score must be from 0 to 1, not {score!r}")


def roc_auc(scored: Sequence[Scored]) -> float | None:
    """Area under the ROC curve: the chance that a random Unsafe sample scores above a random
    Safe one, ties counting one half. None without both classes."""
    positives = sum(1 for unsafe, _ in scored if unsafe)
    negatives = len(scored) - positives
    if positives == 0 or negatives == 0:
        return None
    ordered = sorted(scored, key=lambda pair: pair[1])
    rank_sum = 0.0
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1][1] == ordered[start][1]:
            end += 1
        mean_rank = (start + end) / 2 + 1  # ranks are 1-based; ties share their mean rank
        rank_sum += mean_rank * sum(1 for unsafe, _ in ordered[start : end + 1] if unsafe)
        start = end + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def average_precision(scored: Sequence[Scored]) -> float | None:
    """PR-AUC as average precision: the sum over distinct thresholds, highest first, of the
    precision there times the recall it adds. None without Unsafe samples."""
    positives = sum(1 for unsafe, _ in scored if unsafe)
    if positives == 0:
        return None
    total = 0.0
    previous_recall = 0.0
    for cut in _cuts(scored):
        recall = cut.tp / positives
        total += (recall - previous_recall) * cut.tp / (cut.tp + cut.fp)
        previous_recall = recall
    return total


def brier(scored: Sequence[Scored]) -> float | None:
    """Mean squared difference between the score and the truth (1 Unsafe, 0 Safe)."""
    if not scored:
        return None
    return sum((score - (1.0 if unsafe else 0.0)) ** 2 for unsafe, score in scored) / len(scored)


def calibration(scored: Sequence[Scored], bins: int = BINS) -> dict[str, Any]:
    """The reliability curve: `bins` equal-width bins over 0..1, each (lower, upper] except the
    first, which also holds 0. Per bin: count, mean score, fraction Unsafe (None when empty).
    `ece` is the expected calibration error: the count-weighted mean |fraction - mean score|."""
    counts = [0] * bins
    sums = [0.0] * bins
    unsafe_counts = [0] * bins
    for unsafe, score in scored:
        index = _bin(score, bins)
        counts[index] += 1
        sums[index] += score
        unsafe_counts[index] += unsafe
    rows = []
    gap = 0.0
    for i in range(bins):
        mean = sums[i] / counts[i] if counts[i] else None
        fraction = unsafe_counts[i] / counts[i] if counts[i] else None
        if mean is not None and fraction is not None:
            gap += counts[i] * abs(fraction - mean)
        rows.append(
            {
                "lower": i / bins,
                "upper": (i + 1) / bins,
                "count": counts[i],
                "mean_score": mean,
                "fraction_unsafe": fraction,
            }
        )
    return {"bins": rows, "ece": gap / len(scored) if scored else None}


def threshold_rows(
    scored: Sequence[Scored], levels: Sequence[float] = LEVELS
) -> list[dict[str, Any]]:
    """For each level L: `block_at`, the lowest threshold whose precision is at least L (the most
    Unsafe samples caught at that precision), and `review_at`, the highest threshold whose recall
    is at least L (the fewest Safe samples flagged at that recall), each with the precision and
    recall it gives. A level no threshold reaches gives None. Thresholds are observed scores."""
    positives = sum(1 for unsafe, _ in scored if unsafe)
    cuts = _cuts(scored)
    rows = []
    for level in levels:
        block = [c for c in cuts if c.tp / (c.tp + c.fp) >= level]
        review = [c for c in cuts if positives and c.tp / positives >= level]
        block_cut = min(block, key=lambda c: c.threshold) if block else None
        review_cut = max(review, key=lambda c: c.threshold) if review else None
        rows.append(
            {
                "level": level,
                **_described("block", block_cut, positives),
                **_described("review", review_cut, positives),
            }
        )
    return rows


def roc_points(scored: Sequence[Scored]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) from (0, 0) through each distinct threshold,
    highest first. Empty without both classes."""
    positives = sum(1 for unsafe, _ in scored if unsafe)
    negatives = len(scored) - positives
    if positives == 0 or negatives == 0:
        return []
    return [(0.0, 0.0)] + [(c.fp / negatives, c.tp / positives) for c in _cuts(scored)]


def pr_points(scored: Sequence[Scored]) -> list[tuple[float, float]]:
    """(recall, precision) at each distinct threshold, highest first. Empty without Unsafe
    samples."""
    positives = sum(1 for unsafe, _ in scored if unsafe)
    if positives == 0:
        return []
    return [(c.tp / positives, c.tp / (c.tp + c.fp)) for c in _cuts(scored)]


def _described(prefix: str, cut: _Cut | None, positives: int) -> dict[str, Any]:
    if cut is None:
        return {f"{prefix}_at": None, f"{prefix}_precision": None, f"{prefix}_recall": None}
    return {
        f"{prefix}_at": cut.threshold,
        f"{prefix}_precision": cut.tp / (cut.tp + cut.fp),
        f"{prefix}_recall": cut.tp / positives if positives else None,
    }


def _cuts(scored: Sequence[Scored]) -> list[_Cut]:
    """One cut per distinct score, highest first, with cumulative counts."""
    ordered = sorted(scored, key=lambda pair: pair[1], reverse=True)
    cuts: list[_Cut] = []
    tp = fp = 0
    for i, (unsafe, score) in enumerate(ordered):
        tp += unsafe
        fp += not unsafe
        if i + 1 == len(ordered) or ordered[i + 1][1] != score:
            cuts.append(_Cut(threshold=score, tp=tp, fp=fp))
    return cuts


def _bin(score: float, bins: int) -> int:
    """The bin of a score: the number of inner edges strictly below it."""
    return sum(1 for i in range(1, bins) if i / bins < score)
