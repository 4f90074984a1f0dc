"""Evaluation metrics of a guard model on a labelled dataset (docs/evaluation.md, "Metrics").

Pure: samples and parsed predictions in, one JSON-ready dict out. Unsafe is the positive class.
An answer that could not be parsed, a request that failed without an answer (an image that
could not be read or decoded, an engine error or timeout) and a sample with no prediction at all
always count as wrong: on an Unsafe sample as a false negative, on a Safe one as a false
positive, and never as the right category. A value that would divide by zero is None (null in
JSON), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from moderator.events.verdict import NONE_APPLYING, category_code
from moderator.training import curves
from moderator.training.dataset import POLICY_EXCEPTIONS

Rating = Literal["Safe", "Unsafe"]

DEFAULT_POLICY = "default"  # Sample.policy of a prompt built from the default policy
# The rule code ("NA") of the shared category string, as per-rule groups and policies name it.
NONE_APPLYING_RULE = category_code(NONE_APPLYING)
PREDICTED_COLUMNS = ("Safe", "Unsafe", "unparseable", "error", "missing")  # confusion() columns
# The headline figures of a run, in the order the eval command and a model card show them.
HEADLINE = (
    "n",
    "balanced_accuracy",
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "f2",
    "category_accuracy",
    "policy_exception_rate",
    "pes",
    "unparseable",
)


class SampleLike(Protocol):
    """What the metrics read of a dataset sample (moderator.training.dataset.Sample fits)."""

    @property
    def id(self) -> str: ...
    @property
    def rating(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def augmented(self) -> str | None: ...


@dataclass(frozen=True)
class Prediction:
    """A model's answer for one sample. `rating` None: the output could not be parsed, or the
    request failed (`error` set: its error code, such as `corrupt_image`, and `error_message`)."""

    id: str
    rating: Rating | None
    category: str | None
    score: float | None  # P(Unsafe), 0..1, when the engine gives one
    output: str  # the raw model text
    error: str | None = None  # the error code of a request that failed without an answer
    error_message: str | None = None
    smoke_test: bool = False  # a smoke-test model answered (the fake engine, a tiny checkpoint)

    @property
    def failed(self) -> bool:
        """The request failed: no answer came back (not an answer the parser could not read)."""
        return self.error is not None

    @property
    def unparseable(self) -> bool:
        """An answer came back, but the parser could not read a rating from it."""
        return self.rating is None and self.error is None


@dataclass(frozen=True)
class Outcome:
    """One sample beside its prediction (None when the predictions have none for it)."""

    sample: SampleLike
    prediction: Prediction | None

    @property
    def unsafe(self) -> bool:
        return self.sample.rating == "Unsafe"

    @property
    def predicted(self) -> Rating | None:
        """The parsed rating; None when unparseable or missing."""
        return self.prediction.rating if self.prediction is not None else None

    @property
    def rating_correct(self) -> bool:
        return self.predicted == self.sample.rating

    @property
    def category_correct(self) -> bool:
        return self.prediction is not None and self.prediction.category == self.sample.category

    @property
    def exception(self) -> bool:
        """A policy-exception sample: made by a rule in dataset.POLICY_EXCEPTIONS (a violated
        category declared allowed -> Safe; a safe sample's category declared sensitive ->
        Unsafe), so the policy text, not the image alone, decides the right answer."""
        return self.sample.augmented in POLICY_EXCEPTIONS

    @property
    def default_policy(self) -> bool:
        """An original sample (not augmented) judged under the default policy (or no policy
        named)."""
        return self.sample.augmented is None and self.sample.policy in (None, DEFAULT_POLICY)

    @property
    def score(self) -> float | None:
        return self.prediction.score if self.prediction is not None else None


def join(samples: Iterable[SampleLike], predictions: Iterable[Prediction]) -> list[Outcome]:
    """Pair each sample with its prediction by id, in the samples' order.

    Raises ValueError on a duplicate sample or prediction id, on a prediction for no sample, and
    on a score outside 0..1. A sample without a prediction gets None (counted as `missing`).
    """
    by_id: dict[str, Prediction] = {}
    for prediction in predictions:
        if prediction.id in by_id:
            raise ValueError(f"two predictions for sample {prediction.id!r}")
        if prediction.score is not None:
            curves.check_scores([(False, prediction.score)])
        by_id[prediction.id] = prediction
    seen: set[str] = set()
    outcomes = []
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"two samples with id {sample.id!r}")
        seen.add(sample.id)
        outcomes.append(Outcome(sample, by_id.get(sample.id)))
    unknown = sorted(set(by_id) - seen)
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(f"predictions for ids not in the dataset: {shown}{more}")
    return outcomes


def compute(
    samples: Iterable[SampleLike],
    predictions: Iterable[Prediction],
    *,
    elapsed_s: float | None = None,
    levels: Sequence[float] = curves.LEVELS,
    bins: int = curves.BINS,
) -> dict[str, Any]:
    """Every metric of one evaluation, as a JSON-ready dict (keys in docs/evaluation.md).

    `elapsed_s` is the wall time the predictions took; with it, `samples_per_second` is set.
    """
    outcomes = join(samples, predictions)
    result = summarise(outcomes)
    exceptions = [o for o in outcomes if o.exception]
    per = _ratio(sum(o.rating_correct for o in exceptions), len(exceptions))
    result["policy_exceptions"] = len(exceptions)
    result["policy_exception_rate"] = per
    result["pes"] = _harmonic(per, result["balanced_accuracy"])
    result["per_category"] = {
        category: summarise(group) for category, group in _groups(outcomes, _true_category)
    }
    augmented = [o for o in outcomes if o.sample.augmented is not None]
    result["per_augmentation"] = {
        rule: summarise(group) for rule, group in _groups(augmented, _rule)
    }
    result["default_policy"] = summarise([o for o in outcomes if o.default_policy])
    timed = elapsed_s is not None and math.isfinite(elapsed_s) and elapsed_s > 0
    result["elapsed_s"] = elapsed_s if timed else None
    result["samples_per_second"] = len(outcomes) / elapsed_s if timed and elapsed_s else None
    result.update(score_metrics(outcomes, levels=levels, bins=bins))
    return result


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts and rating/category metrics of a group of outcomes (a whole run or a subset)."""
    tp = sum(1 for o in outcomes if o.unsafe and o.predicted == "Unsafe")
    fn = sum(1 for o in outcomes if o.unsafe) - tp
    tn = sum(1 for o in outcomes if not o.unsafe and o.predicted == "Safe")
    fp = sum(1 for o in outcomes if not o.unsafe) - tn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    unsafe = [o for o in outcomes if o.unsafe]
    return {
        "n": len(outcomes),
        "unsafe": tp + fn,
        "safe": tn + fp,
        "unparseable": sum(1 for o in outcomes if o.prediction and o.prediction.unparseable),
        "errors": sum(1 for o in outcomes if o.prediction and o.prediction.failed),
        "missing": sum(1 for o in outcomes if o.prediction is None),
        "confusion": confusion(outcomes),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _ratio(tp + tn, len(outcomes)),
        "balanced_accuracy": _mean(recall, specificity),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": _f_beta(1.0, tp, fp, fn),
        "f2": _f_beta(2.0, tp, fp, fn),
        "category_accuracy": _ratio(sum(o.category_correct for o in outcomes), len(outcomes)),
        "category_accuracy_unsafe": _ratio(sum(o.category_correct for o in unsafe), len(unsafe)),
    }


def confusion(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    """True rating -> predicted rating ("Safe", "Unsafe", "unparseable", "error" for a failed
    request, "missing") -> count."""
    table = {truth: dict.fromkeys(PREDICTED_COLUMNS, 0) for truth in ("Safe", "Unsafe")}
    for o in outcomes:
        truth = "Unsafe" if o.unsafe else "Safe"
        if o.prediction is None:
            table[truth]["missing"] += 1
        elif o.prediction.failed:
            table[truth]["error"] += 1
        else:
            table[truth][o.prediction.rating or "unparseable"] += 1
    return table


def score_metrics(
    outcomes: Sequence[Outcome],
    *,
    levels: Sequence[float] = curves.LEVELS,
    bins: int = curves.BINS,
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, Brier score, calibration and thresholds over the samples with a score.

    Every key is present; all but `scored` are None when no prediction has a score.
    `thresholds.per_rule` groups the samples by the rule of the category the model named (O1..O9,
    NA), as a policy threshold applies to that category's rule; an answer with no category is in
    `all` only.
    """
    scored = [(o.unsafe, o.score) for o in outcomes if o.score is not None]
    if not scored:
        return {
            "scored": 0,
            "roc_auc": None,
            "pr_auc": None,
            "brier": None,
            "calibration": None,
            "thresholds": None,
        }
    by_rule: dict[str, list[curves.Scored]] = {}
    for o in outcomes:
        code = rule_code(o.prediction.category) if o.prediction is not None else None
        if o.score is not None and code is not None:
            by_rule.setdefault(code, []).append((o.unsafe, o.score))
    return {
        "scored": len(scored),
        "roc_auc": curves.roc_auc(scored),
        "pr_auc": curves.average_precision(scored),
        "brier": curves.brier(scored),
        "calibration": curves.calibration(scored, bins),
        "thresholds": {
            "levels": list(levels),
            "all": _threshold_group(scored, levels),
            "per_rule": {
                code: _threshold_group(group, levels) for code, group in sorted(by_rule.items())
            },
        },
    }


def rule_code(category: str | None) -> str | None:
    """The policy rule of a category string: "O4: Nudity Content" -> "O4", "NA: ..." -> "NA"."""
    if not category:
        return None
    code = category.split(":", 1)[0].strip().upper()
    if code == NONE_APPLYING_RULE or (len(code) == 2 and code[0] == "O" and code[1] in "123456789"):
        return code
    return None


def _threshold_group(scored: Sequence[curves.Scored], levels: Sequence[float]) -> dict[str, Any]:
    unsafe = sum(1 for truth, _ in scored if truth)
    return {
        "n": len(scored),
        "unsafe": unsafe,
        "rows": curves.threshold_rows(scored, levels),
    }


def _groups(
    outcomes: Iterable[Outcome], key: Callable[[Outcome], str]
) -> list[tuple[str, list[Outcome]]]:
    grouped: dict[str, list[Outcome]] = {}
    for o in outcomes:
        grouped.setdefault(key(o), []).append(o)
    return sorted(grouped.items())


def _true_category(outcome: Outcome) -> str:
    return outcome.sample.category


def _rule(outcome: Outcome) -> str:
    return outcome.sample.augmented or ""


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mean(a: float | None, b: float | None) -> float | None:
    return (a + b) / 2 if a is not None and b is not None else None


def _harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a + b == 0:
        return None
    return 2 * a * b / (a + b)


def _f_beta(beta: float, tp: int, fp: int, fn: int) -> float | None:
    """F-beta from counts: (1+b^2)tp / ((1+b^2)tp + b^2 fn + fp); equal to the harmonic form
    whenever precision and recall are defined, and 0 when nothing Unsafe was caught."""
    weight = beta * beta
    denominator = (1 + weight) * tp + weight * fn + fp
    return (1 + weight) * tp / denominator if denominator else None
