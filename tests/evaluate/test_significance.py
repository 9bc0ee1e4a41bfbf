"""Bootstrap intervals describe their own estimate; a real lead is significant, a coin flip is not."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import precision_recall_fscore_support

from specialize.evaluate.metrics import classification_metrics
from specialize.evaluate.significance import compare_systems, interval, resampled_scores

LABELS = ["a", "b", "c"]


def _gold(n: int) -> list[str]:
    return [LABELS[i % 3] for i in range(n)]


def _answers(
    labels: list[str], n: int, accuracy: float, bias: float, seed: int
) -> tuple[list[str], list[str]]:
    """Gold answers drawn with uneven label shares, and a system right with probability `accuracy` that, when
    wrong, answers its favourite label with probability `bias` (a label prior) and any label otherwise."""
    rng = random.Random(seed)
    weights = [rng.random() ** 3 + 1e-3 for _ in labels]
    favourite = rng.choice(labels)
    gold = rng.choices(labels, weights, k=n)
    predicted = [
        g if rng.random() < accuracy else favourite if rng.random() < bias else rng.choice(labels)
        for g in gold
    ]
    return gold, predicted


@settings(max_examples=150, deadline=None)
@given(
    n_labels=st.integers(2, 90),
    n=st.integers(1, 160),
    accuracy=st.floats(0, 1),
    bias=st.floats(0, 1),
    seed=st.integers(0, 10**6),
)
def test_the_estimate_is_scikit_learns_macro_f1_and_lies_inside_its_interval(
    n_labels, n, accuracy, bias, seed
):
    labels = [f"label {i}" for i in range(n_labels)]
    gold, predicted = _answers(labels, n, accuracy, bias, seed)

    estimate = classification_metrics(gold, predicted, labels)
    low, high = interval(resampled_scores(gold, predicted, labels, seed))

    # one definition: scikit-learn's macro average without labels= (the labels present), for every average
    p, r, f, _ = precision_recall_fscore_support(gold, predicted, average="macro", zero_division=0)
    assert abs(estimate["macro_precision"] - p) < 1e-12 and abs(estimate["macro_recall"] - r) < 1e-12
    assert abs(estimate["macro_f1"] - f) < 1e-12
    assert estimate["labels_averaged"] == len(set(gold) | set(predicted))
    assert resampled_scores(gold, predicted, labels, None)[0] == estimate["macro_f1"]
    assert low - 1e-12 <= estimate["macro_f1"] <= high + 1e-12


@settings(max_examples=40, deadline=None)
@given(
    n_labels=st.integers(2, 80),
    n=st.integers(20, 60),
    accuracy=st.floats(0.2, 0.8),
    seed=st.integers(0, 10**6),
)
def test_the_interval_narrows_as_the_sample_grows(n_labels, n, accuracy, seed):
    labels = [f"label {i}" for i in range(n_labels)]
    gold, predicted = _answers(labels, 8 * n, accuracy, 0.3, seed)  # the small sample is the first n of these

    small = interval(resampled_scores(gold[:n], predicted[:n], labels, seed))
    large = interval(resampled_scores(gold, predicted, labels, seed))

    assert large[1] - large[0] < small[1] - small[0]


def test_fewer_examples_than_labels_average_only_the_labels_they_hold():
    """banking77's case: 40 examples of 77 intents. Averaging over all 77 counts 37+ absent labels as 0."""
    labels = [f"intent {i}" for i in range(77)]
    gold = labels[:40]
    predicted = [g if i % 3 == 0 else labels[0] for i, g in enumerate(gold)]

    m = classification_metrics(gold, predicted, labels)

    assert m["labels_averaged"] == 40
    present = [v for v in m["per_class_f1"].values() if v is not None]
    assert len(present) == 40 and abs(m["macro_f1"] - sum(present) / 40) < 1e-12
    assert m["per_class_f1"]["intent 76"] is None, "a label neither asked nor answered is absent, not 0"
    low, high = interval(resampled_scores(gold, predicted, labels, 0))
    assert low <= m["macro_f1"] <= high


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
    systems = {"base_zero_shot": weak, "base_rag": better, "fine_tuned_rag": weak, "fine_tuned": tuned}

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
