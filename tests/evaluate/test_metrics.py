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
