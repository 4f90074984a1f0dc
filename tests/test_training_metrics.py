"""Evaluation metrics: hand-computed values on a fixed case, and scikit-learn on random inputs.

The fixed case's expected numbers are worked out by hand in the comments beside them. The
random cases check every rating metric, ROC-AUC, average precision and the calibration bins
against scikit-learn, with unparseable answers mapped to the wrong label (the documented rule).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from moderator.events.verdict import CATEGORIES as TAXONOMY
from moderator.events.verdict import NONE_APPLYING, category_code
from moderator.policy.load import load_text
from moderator.training import curves
from moderator.training.dataset import Sample
from moderator.training.metrics import NONE_APPLYING_RULE, Prediction, compute, rule_code
from moderator.training.report_tables import policy_snippets

O1 = "O1: Hate, Humiliation, Harassment"
O2 = "O2: Violence, Harm, or Cruelty"
O3 = "O3: Sexual Content"
O4 = "O4: Nudity Content"
O5 = "O5: Criminal Planning"
O6 = "O6: Weapons or Substance Abuse"
NA = "NA: None applying"
CATEGORIES = (O1, O2, O3, O4, O5, O6, NA)


def _sample(
    sample_id: str,
    rating: str,
    category: str,
    augmented: str | None = None,
    policy: str | None = None,
) -> Sample:
    return Sample(
        id=sample_id,
        image=f"images/{sample_id}.png",
        rating=rating,  # type: ignore[arg-type]
        category=category,
        policy=policy,
        augmented=augmented,
    )


def _answer(
    sample_id: str, rating: str | None, category: str | None, score: float | None
) -> Prediction:
    return Prediction(sample_id, rating, category, score, output="...")  # type: ignore[arg-type]


# (sample, prediction or None); the comment says what the pair is for the rating.
FIXED = [
    (_sample("s1", "Unsafe", O1), _answer("s1", "Unsafe", O1, 0.9)),  # TP, category right
    (_sample("s2", "Unsafe", O4), _answer("s2", "Unsafe", O3, 0.8)),  # TP, category wrong
    (_sample("s3", "Unsafe", O2), _answer("s3", "Safe", NA, 0.3)),  # FN
    (_sample("s4", "Unsafe", O6), _answer("s4", None, None, None)),  # FN: unparseable
    (_sample("s5", "Safe", NA), _answer("s5", "Safe", NA, 0.1)),  # TN
    (_sample("s6", "Safe", NA), _answer("s6", "Safe", NA, 0.35)),  # TN
    (_sample("s7", "Safe", NA), _answer("s7", None, None, 0.5)),  # FP: unparseable, scored
    (_sample("s8", "Safe", O4, "violated_allowed"), _answer("s8", "Safe", O4, 0.4)),  # TN
    (_sample("s9", "Unsafe", O3, "safe_sensitive"), _answer("s9", "Safe", NA, 0.2)),  # FN
    (_sample("s10", "Unsafe", O5, "other_allowed"), _answer("s10", "Unsafe", O5, 0.7)),  # TP
    (_sample("s11", "Safe", NA), None),  # FP: no prediction
    (_sample("s12", "Safe", NA, policy="shop"), _answer("s12", "Safe", NA, 0.05)),  # TN
]


@pytest.fixture(scope="module")
def fixed() -> dict[str, Any]:
    samples = [s for s, _ in FIXED]
    predictions = [p for _, p in FIXED if p is not None]
    return compute(samples, predictions, elapsed_s=4.0)


def test_rating_metrics_by_hand(fixed: dict[str, Any]) -> None:
    # Unsafe: s1 s2 s3 s4 s9 s10 -> TP s1 s2 s10 = 3, FN 3.
    # Safe: s5 s6 s7 s8 s11 s12 -> TN s5 s6 s8 s12 = 4, FP s7 s11 = 2.
    assert (fixed["tp"], fixed["fn"], fixed["tn"], fixed["fp"]) == (3, 3, 4, 2)
    assert (fixed["n"], fixed["unsafe"], fixed["safe"]) == (12, 6, 6)
    assert (fixed["unparseable"], fixed["missing"]) == (2, 1)
    assert fixed["accuracy"] == pytest.approx(7 / 12)
    assert fixed["precision"] == pytest.approx(3 / 5)
    assert fixed["recall"] == pytest.approx(1 / 2)
    assert fixed["specificity"] == pytest.approx(4 / 6)
    assert fixed["balanced_accuracy"] == pytest.approx((1 / 2 + 4 / 6) / 2)  # 7/12
    assert fixed["f1"] == pytest.approx(2 * 3 / (2 * 3 + 3 + 2))  # 6/11
    assert fixed["f2"] == pytest.approx(5 * 3 / (5 * 3 + 4 * 3 + 2))  # 15/29
    assert fixed["confusion"] == {
        "Safe": {"Safe": 4, "Unsafe": 0, "unparseable": 1, "error": 0, "missing": 1},
        "Unsafe": {"Safe": 2, "Unsafe": 3, "unparseable": 1, "error": 0, "missing": 0},
    }
    assert fixed["samples_per_second"] == pytest.approx(12 / 4.0)


def test_category_and_policy_metrics_by_hand(fixed: dict[str, Any]) -> None:
    # Right category: s1 s5 s6 s8 s10 s12 = 6 of 12; among Unsafe samples s1 s10 = 2 of 6.
    assert fixed["category_accuracy"] == pytest.approx(6 / 12)
    assert fixed["category_accuracy_unsafe"] == pytest.approx(2 / 6)
    # Policy exceptions: s8 (right) and s9 (wrong); PES = harmonic mean with BA 7/12 = 7/13.
    assert fixed["policy_exceptions"] == 2
    assert fixed["policy_exception_rate"] == pytest.approx(1 / 2)
    assert fixed["pes"] == pytest.approx(7 / 13)
    # Default policy: s1-s7 and s11 (s12 names policy "shop"): TP 2, FN 2, TN 2, FP 2.
    default = fixed["default_policy"]
    assert (default["n"], default["tp"], default["fn"], default["tn"], default["fp"]) == (
        8,
        2,
        2,
        2,
        2,
    )
    assert default["balanced_accuracy"] == pytest.approx(0.5)
    assert sorted(fixed["per_augmentation"]) == [
        "other_allowed",
        "safe_sensitive",
        "violated_allowed",
    ]


def test_per_category_by_hand(fixed: dict[str, Any]) -> None:
    na = fixed["per_category"][NA]  # s5 s6 s7 s11 s12, all Safe: TN 3, FP 2
    assert (na["n"], na["tn"], na["fp"]) == (5, 3, 2)
    assert na["specificity"] == pytest.approx(3 / 5)
    assert na["recall"] is None and na["balanced_accuracy"] is None  # no Unsafe sample
    assert na["precision"] == 0.0 and na["f1"] == 0.0  # two false positives, nothing caught
    o4 = fixed["per_category"][O4]  # s2 (TP, category wrong), s8 (TN)
    assert o4["balanced_accuracy"] == 1.0 and o4["category_accuracy"] == 0.5
    assert sorted(fixed["per_category"]) == sorted({s.category for s, _ in FIXED})


def test_score_metrics_by_hand(fixed: dict[str, Any]) -> None:
    # Scored: Unsafe .9 .8 .7 .3 .2, Safe .5 .4 .35 .1 .05 (s4 and s11 have no score).
    assert fixed["scored"] == 10
    # Unsafe above Safe: 5 + 5 + 5 + 2 + 2 of 25 pairs.
    assert fixed["roc_auc"] == pytest.approx(19 / 25)
    # Recall steps of 0.2 at precisions 1, 1, 1, 4/7, 5/8.
    assert fixed["pr_auc"] == pytest.approx(0.2 * (3 + 4 / 7 + 5 / 8))  # 47/56
    # (1-s)^2 on Unsafe: .01 .04 .09 .49 .64; s^2 on Safe: .25 .16 .1225 .01 .0025.
    assert fixed["brier"] == pytest.approx(1.815 / 10)
    bins = fixed["calibration"]["bins"]
    assert [b["count"] for b in bins] == [2, 1, 1, 2, 1, 0, 1, 1, 1, 0]  # .1 in bin 0, .3 in 2
    assert bins[0]["mean_score"] == pytest.approx(0.075) and bins[0]["fraction_unsafe"] == 0.0
    assert bins[3]["mean_score"] == pytest.approx(0.375)
    assert bins[5]["mean_score"] is None and bins[5]["fraction_unsafe"] is None
    # |fraction - mean| weighted: 2*.075 + .8 + .7 + 2*.375 + .5 + .3 + .2 + .1 = 3.5, over 10.
    assert fixed["calibration"]["ece"] == pytest.approx(0.35)


def test_thresholds_by_hand(fixed: dict[str, Any]) -> None:
    everything = fixed["thresholds"]["all"]
    assert (everything["n"], everything["unsafe"]) == (10, 5)
    by_level = {row["level"]: row for row in everything["rows"]}
    # Precision 1 down to 0.7 (three Unsafe), 3/4 at 0.5: every level blocks at 0.7.
    assert {r["block_at"] for r in by_level.values()} == {0.7}
    assert by_level[0.9]["block_recall"] == pytest.approx(0.6)
    # Recall 0.8 first at 0.3 (4 of 5, precision 4/7); recall 1 at 0.2 (precision 5/8).
    assert by_level[0.8]["review_at"] == 0.3
    assert by_level[0.8]["review_precision"] == pytest.approx(4 / 7)
    assert by_level[0.9]["review_at"] == 0.2
    # Rule NA (answers naming NA): Unsafe .3 .2, Safe .35 .1 .05: precision never above 2/3.
    na = {row["level"]: row for row in fixed["thresholds"]["per_rule"]["NA"]["rows"]}
    assert na[0.8]["block_at"] is None and na[0.8]["review_at"] == 0.2
    # The unparseable s7 names no category: in "all" only.
    per_rule = fixed["thresholds"]["per_rule"]
    assert sum(group["n"] for group in per_rule.values()) == 9
    assert sorted(per_rule) == ["NA", "O1", "O3", "O4", "O5"]


def test_policy_snippets_load_as_a_tenant_policy(fixed: dict[str, Any]) -> None:
    snippets = policy_snippets(fixed)
    assert [level for level, _ in snippets] == [0.8, 0.9, 0.95, 0.99]
    for _, text in snippets:
        policy = load_text(f"schema: 1\nextends: default\n{text}\n", Path("t.yaml"))
        assert policy.categories is not None and "O1" in policy.categories
    assert "  O1: {block_at: 0.9, review_at: 0.9}" in snippets[0][1]
    assert "none_applying: {review_at: 0.2}" in snippets[0][1]


def test_no_score_and_no_sample_give_nulls_not_nan() -> None:
    empty = compute([], [])
    assert empty["n"] == 0 and empty["balanced_accuracy"] is None and empty["pes"] is None
    assert empty["roc_auc"] is None and empty["thresholds"] is None and empty["scored"] == 0
    json.dumps(empty, allow_nan=False)  # raises on NaN or infinity
    one_class = compute([_sample("a", "Safe", NA)], [_answer("a", "Safe", NA, 0.2)])
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None
    assert one_class["recall"] is None and one_class["specificity"] == 1.0
    assert one_class["policy_exception_rate"] is None and one_class["samples_per_second"] is None


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        ([_answer("a", "Safe", NA, None), _answer("a", "Safe", NA, None)], "two predictions"),
        ([_answer("zz", "Safe", NA, None)], "not in the dataset: 'zz'"),
        ([_answer("a", "Safe", NA, 1.5)], "from 0 to 1"),
        ([_answer("a", "Safe", NA, math.nan)], "from 0 to 1"),
    ],
)
def test_bad_predictions_are_refused(predictions: list[Prediction], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute([_sample("a", "Safe", NA)], predictions)


def test_rule_codes() -> None:
    assert [rule_code(c) for c in (O4, NA, "o9: x", None, "", "O10: Spam", "Unsafe")] == [
        "O4",
        "NA",
        "O9",
        None,
        None,
        None,
        None,
    ]


def test_every_category_of_the_taxonomy_is_its_own_rule() -> None:
    """The rule codes are those of the categories a verdict names, "NA" included: a per-rule
    group is keyed as the policy row it would tune."""
    assert [rule_code(c) for c in TAXONOMY] == [category_code(c) for c in TAXONOMY]
    assert rule_code(NONE_APPLYING) == NONE_APPLYING_RULE == "NA"


# -- against scikit-learn ----------------------------------------------------------------------


def _random_case(seed: int) -> tuple[list[Sample], list[Prediction]]:
    rng = random.Random(seed)
    n = rng.randint(20, 200)
    ties = seed % 2 == 0  # half the cases round scores, so tied scores are common
    samples, predictions = [], []
    for i in range(n):
        unsafe = i < 3 or (i >= 6 and rng.random() < 0.4)  # both classes always present
        category = rng.choice(CATEGORIES[:-1]) if unsafe else rng.choice(CATEGORIES)
        samples.append(_sample(f"r{i}", "Unsafe" if unsafe else "Safe", category))
        roll = rng.random()
        rating = (
            None
            if roll < 0.08
            else ("Unsafe" if rng.random() < (0.75 if unsafe else 0.3) else "Safe")
        )
        score = min(1.0, max(0.0, rng.gauss(0.65 if unsafe else 0.35, 0.2)))
        predictions.append(
            _answer(f"r{i}", rating, rng.choice(CATEGORIES), round(score, 2) if ties else score)
        )
    return samples, predictions


@pytest.mark.parametrize("seed", range(40))
def test_against_scikit_learn(seed: int) -> None:
    metrics_module = pytest.importorskip(
        "sklearn.metrics", reason="scikit-learn is a dev dependency"
    )
    calibration_module = pytest.importorskip("sklearn.calibration")
    samples, predictions = _random_case(seed)
    result = compute(samples, predictions)
    truth = [1 if s.rating == "Unsafe" else 0 for s in samples]
    # The documented rule: an unparseable answer is the wrong label.
    predicted = [
        (1 if p.rating == "Unsafe" else 0) if p.rating is not None else 1 - t
        for p, t in zip(predictions, truth, strict=True)
    ]
    m = metrics_module
    assert result["accuracy"] == pytest.approx(m.accuracy_score(truth, predicted))
    assert result["balanced_accuracy"] == pytest.approx(m.balanced_accuracy_score(truth, predicted))
    assert result["precision"] == pytest.approx(
        m.precision_score(truth, predicted, zero_division=0)
    )
    assert result["recall"] == pytest.approx(m.recall_score(truth, predicted))
    assert result["specificity"] == pytest.approx(m.recall_score(truth, predicted, pos_label=0))
    assert result["f1"] == pytest.approx(m.f1_score(truth, predicted, zero_division=0))
    assert result["f2"] == pytest.approx(m.fbeta_score(truth, predicted, beta=2, zero_division=0))
    scores = [p.score for p in predictions]
    assert result["roc_auc"] == pytest.approx(m.roc_auc_score(truth, scores))
    assert result["pr_auc"] == pytest.approx(m.average_precision_score(truth, scores))
    assert result["brier"] == pytest.approx(m.brier_score_loss(truth, scores))
    fraction, mean = calibration_module.calibration_curve(truth, scores, n_bins=curves.BINS)
    filled = [b for b in result["calibration"]["bins"] if b["count"]]
    assert [b["fraction_unsafe"] for b in filled] == pytest.approx(list(fraction))
    assert [b["mean_score"] for b in filled] == pytest.approx(list(mean))


@pytest.mark.parametrize("seed", range(20))
def test_thresholds_against_brute_force(seed: int) -> None:
    samples, predictions = _random_case(seed)
    pairs = [(s.rating == "Unsafe", p.score) for s, p in zip(samples, predictions, strict=True)]
    positives = sum(u for u, _ in pairs)
    rows = curves.threshold_rows([(u, s) for u, s in pairs if s is not None])
    for row in rows:
        level = row["level"]
        stats = []
        for t in sorted({s for _, s in pairs if s is not None}):
            caught = [u for u, s in pairs if s is not None and s >= t]
            stats.append((t, sum(caught) / len(caught), sum(caught) / positives))
        block = [t for t, precision, _ in stats if precision >= level]
        review = [t for t, _, recall in stats if recall >= level]
        assert row["block_at"] == (min(block) if block else None)
        assert row["review_at"] == (max(review) if review else None)
