"""Bootstrap intervals contain the observed score; a real lead is significant, a coin flip is not."""

from __future__ import annotations

import random

from specialize.evaluate.metrics import classification_metrics
from specialize.evaluate.significance import compare_systems, resampled_scores

LABELS = ["a", "b", "c"]


def _gold(n: int) -> list[str]:
    return [LABELS[i % 3] for i in range(n)]


def test_resampled_macro_f1_matches_scikit_learn_on_the_identity_resample():
    gold = _gold(60)
    rng = random.Random(0)
    pred = [g if rng.random() < 0.7 else rng.choice(LABELS) for g in gold]
    scores = resampled_scores(gold, pred, LABELS, seed=0)
    observed = classification_metrics(gold, pred, LABELS)["macro_f1"]
    assert scores.min() <= observed <= scores.max()
    assert abs(scores.mean() - observed) < 0.05


def test_paired_test_separates_a_real_lead_from_noise():
    gold = _gold(150)
    rng = random.Random(1)
    good = [g if rng.random() < 0.9 else "a" for g in gold]
    weak = ["a"] * len(gold)
    coin = [rng.choice(LABELS) for _ in gold]
    clear = compare_systems(gold, {"base_zero_shot": weak, "fine_tuned": good}, LABELS, seed=0)
    assert clear["paired_test"]["p_value"] < 0.01 and clear["paired_test"]["interval"][0] > 0
    low, high = clear["intervals"]["fine_tuned"]
    assert low < classification_metrics(gold, good, LABELS)["macro_f1"] < high
    noise = compare_systems(
        gold, {"base_zero_shot": coin, "fine_tuned": list(reversed(coin))}, LABELS, seed=0
    )
    assert noise["paired_test"]["p_value"] > 0.05


def test_observed_difference_is_the_plain_score_difference():
    gold = _gold(90)
    good, weak = list(gold), ["a"] * len(gold)
    test = compare_systems(gold, {"base_zero_shot": weak, "fine_tuned": good}, LABELS, seed=0)["paired_test"]
    expected = (
        classification_metrics(gold, good, LABELS)["macro_f1"]
        - classification_metrics(gold, weak, LABELS)["macro_f1"]
    )
    assert abs(test["difference"] - expected) < 1e-9


def test_the_fine_tuned_model_is_tested_against_the_best_alternative():
    gold = _gold(60)
    weak, better, tuned = ["a"] * 60, [g if i % 4 else "a" for i, g in enumerate(gold)], list(gold)
    systems = {"base_zero_shot": weak, "base_rag": better, "fine_tuned": tuned, "fine_tuned_rag": weak}

    test = compare_systems(gold, systems, LABELS, seed=0)["paired_test"]

    assert (test["system"], test["against"]) == ("fine_tuned", "base_rag")
    f1 = {s: classification_metrics(gold, p, LABELS)["macro_f1"] for s, p in systems.items()}
    assert abs(test["difference"] - (f1["fine_tuned"] - f1["base_rag"])) < 1e-9


def test_per_example_scores_are_compared_by_their_mean():
    zero_shot, few_shot = [1.0, 0.0, 0.0, 0.0] * 10, [1.0, 1.0, 0.0, 0.0] * 10
    out = compare_systems(
        None, {"base_zero_shot": zero_shot, "base_few_shot": few_shot, "fine_tuned": few_shot}, None, 0
    )

    assert out["paired_test"]["against"] == "base_few_shot"
    assert out["paired_test"]["difference"] == 0.0 and out["paired_test"]["p_value"] == 1.0
    low, high = out["intervals"]["base_zero_shot"]
    assert low < 0.25 < high
