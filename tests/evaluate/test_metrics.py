"""Task metrics on hand-checkable inputs."""

from __future__ import annotations

import random

import pytest

from specialize.evaluate.metrics import (
    classification_metrics,
    final_number,
    generation_metrics,
    numeric_matches,
    per_example_scores,
)

LABELS = ["a", "b", "c"]


def test_micro_f1_equals_accuracy_for_single_label_predictions():
    rng = random.Random(0)
    gold = [rng.choice(LABELS) for _ in range(50)]
    predicted = [g if rng.random() < 0.6 else rng.choice(LABELS) for g in gold]

    m = classification_metrics(gold, predicted, LABELS)

    assert m["micro_f1"] == pytest.approx(m["accuracy"])
    assert m["micro_precision"] == pytest.approx(m["accuracy"]) == m["micro_recall"]
    assert m["macro_f1"] == pytest.approx(sum(m["per_class_f1"].values()) / 3)
    assert sum(map(sum, m["confusion_matrix"])) == 50


def test_identical_answers_score_one_on_every_generation_metric():
    answers = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level."]

    m = generation_metrics(answers, list(answers), loss_sum=0.0, n_tokens=10)

    assert m["exact_match"] == 1.0
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["bleu"] == pytest.approx(1.0)
    assert m["perplexity"] == pytest.approx(1.0)
    assert "numeric_match" not in m, "the first reference has no number: not a math task"


def test_partial_answers_get_partial_credit():
    m = generation_metrics(["the parcel was lost by the courier"], ["the parcel was lost"], 0.0, 1)

    assert m["exact_match"] == 0.0
    assert 0.5 < m["rouge_l"] < 1.0
    assert "numeric_match" not in m  # no number in the reference: not a math task


def test_final_number_reads_gsm8k_answers():
    gold = "She pays 3 * $50 = $<<3*50=150>>150.\nThen 150 + 1,100 = 1,250.\n#### 1,250"

    assert final_number(gold) == "1250"
    assert final_number("So the answer is 1250.0 dollars") == "1250"
    assert final_number("It costs -4.5 in total") == "-4.5"
    assert final_number("no number here") is None
    assert numeric_matches([gold, "#### 7"], ["The total is 1250.", "I think 8"]) == [1.0, 0.0]
    assert numeric_matches([gold, "seven"], ["1250", "7"]) is None


def test_per_example_scores_average_to_the_headline():
    gold, predicted = ["#### 3", "#### 4", "#### 5"], ["3", "four", "5"]

    scores = per_example_scores("generation", "numeric_match", gold, predicted)

    assert scores == [1.0, 0.0, 1.0]
    assert sum(scores) / 3 == pytest.approx(generation_metrics(gold, predicted, 0.0, 1)["numeric_match"])


def test_free_answers_count_as_a_label_only_when_they_name_one():
    from specialize.evaluate.metrics import free_answer_metrics

    got = free_answer_metrics(["a", "b", "c", "a"], ["A.", " b ", "it is c", "banana"], LABELS)
    assert got == {"invalid_answer_rate": 0.5, "free_accuracy": 0.5}


def _collapse(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    return classification_metrics(gold, predicted, labels)["collapse"]


def test_one_label_for_every_answer_is_a_collapse():
    labels = [f"clause {i}" for i in range(17)]
    gold = [labels[i % 17] for i in range(170)]

    flagged = _collapse(gold, ["clause 3"] * 168 + ["clause 1", "clause 2"], labels)

    assert flagged["flagged"] and flagged["label"] == "clause 3"
    assert flagged["predicted"] == 168 and flagged["gold_share"] == pytest.approx(1 / 17)
    assert flagged["p_value"] < 1e-50
    rng = random.Random(0)
    good = [g if rng.random() < 0.8 else rng.choice(labels) for g in gold]
    assert not _collapse(gold, good, labels)["flagged"]


def test_a_handful_of_answers_or_a_mild_lean_towards_a_common_label_is_not_a_collapse():
    # four examples, all answered "a": 100% against a gold share of 25%, but four answers are too few to tell
    tiny = _collapse(["a", "b", "c", "d"], ["a"] * 4, ["a", "b", "c", "d"])
    assert tiny["share"] == 1.0 and not tiny["flagged"]
    # 73% of the gold answers are "other"; answering it 85% of the time is a significant but mild lean
    gold = ["other"] * 730 + ["unfair"] * 270
    predicted = ["other"] * 850 + ["unfair"] * 150
    lean = _collapse(gold, predicted, ["other", "unfair"])
    assert lean["p_value"] < 1e-10 and not lean["flagged"]
    # answering "other" every time is a collapse even though "other" is the majority label
    assert _collapse(gold, ["other"] * 1000, ["other", "unfair"])["flagged"]


def test_a_label_never_asked_nor_answered_is_absent_from_every_average():
    labels = ["a", "b", "c", "d"]
    m = classification_metrics(["a", "b", "a"], ["a", "c", "a"], labels)

    assert m["per_class_f1"] == {"a": 1.0, "b": 0.0, "c": 0.0, "d": None}
    assert m["labels_averaged"] == 3 and m["macro_f1"] == pytest.approx(1 / 3)
    assert m["predicted_counts"] == {"a": 2, "b": 0, "c": 1, "d": 0}
    assert m["support"] == {"a": 2, "b": 1, "c": 0, "d": 0}
