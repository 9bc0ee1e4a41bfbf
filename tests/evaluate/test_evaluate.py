"""`evaluate` on the tiny model and real files: retrieval baselines, multiple choice, generation metrics."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from conftest import chat_row, classification_rows, write_jsonl

from specialize.config import EvalConfig
from specialize.data import render_prompt
from specialize.errors import EvalError
from specialize.evaluate import evaluate
from specialize.evaluate.prompts import fitting_prompt
from specialize.evaluate.scoring import label_token_ids
from specialize.models import load_model

LABELS = ["billing", "shipping", "spam"]
PLANTED = "my espresso machine arrived with a cracked water tank"


def _prepared(rows: list[dict]) -> list[dict]:
    """Rows as a prepared split holds them: each with its `source`."""
    return [{**row, "source": f"split.jsonl:{i + 1}"} for i, row in enumerate(rows)]


@pytest.fixture
def splits(tmp_path):
    """Prepared training and validation splits; training row 31 is a near-copy of validation row 3."""
    train = classification_rows(30)
    train.append(chat_row(f"Label this message: {PLANTED} again", "shipping", "shipping"))
    validation = classification_rows(5, start=1000)
    validation[2] = chat_row(f"Label this message: {PLANTED}", "shipping", "shipping")
    return (
        write_jsonl(
            tmp_path / "train.jsonl", [{**r, "source": f"train.jsonl:{i + 1}"} for i, r in enumerate(train)]
        ),
        write_jsonl(
            tmp_path / "validation.jsonl",
            [{**r, "source": f"validation.jsonl:{i + 1}"} for i, r in enumerate(validation)],
        ),
    )


def _evaluate(tiny_model_dir, splits, tmp_path, labels=LABELS, **config):
    train, validation = splits
    return evaluate(
        EvalConfig(**config),
        tiny_model_dir,
        None,
        train,
        validation,
        tmp_path / "eval",
        labels,
        progress=False,
    )


def _report(result) -> dict:
    return json.loads(result.report_path.read_text(encoding="utf-8"))


def test_retrieval_puts_the_near_duplicate_next_to_the_question(tiny_model_dir, splits, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="specialize"):
        result = _evaluate(
            tiny_model_dir,
            splits,
            tmp_path,
            systems=["base_zero_shot", "base_few_shot", "base_rag"],
            few_shot_selection="similarity",
            few_shot_k=3,
            rag_k=3,
        )

    report = _report(result)
    rag = report["systems"]["base_rag"]
    assert rag["context"][2][-1] == "train.jsonl:31", (
        "the most similar example comes last, next to the question"
    )
    assert all(len(c) == 3 for c in rag["context"])
    assert not any(s.startswith("validation") for c in rag["context"] for s in c)
    assert "context" not in report["systems"]["base_zero_shot"]
    # Similarity few-shot with k = rag_k sees the very same prompts: its answers are reused, not recomputed.
    assert report["systems"]["base_few_shot"]["predictions"] == rag["predictions"]
    assert "base_rag sees the same prompts as base_few_shot" in caplog.text
    assert set(report["significance"]["intervals"]) == {"base_zero_shot", "base_few_shot", "base_rag"}
    assert "paired_test" not in report["significance"], "nothing fine-tuned to test"


def test_random_few_shot_uses_one_draw_for_every_question(tiny_model_dir, splits, tmp_path):
    report = _report(_evaluate(tiny_model_dir, splits, tmp_path, systems=["base_few_shot"], few_shot_k=2))

    contexts = report["systems"]["base_few_shot"]["context"]
    assert len(contexts[0]) == 2 and all(c == contexts[0] for c in contexts)


def test_rag_over_documents_retrieves_the_relevant_passage(tiny_model_dir, splits, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "repairs.md").write_text(f"Returns policy. A {PLANTED} is replaced for free.", encoding="utf-8")
    (docs / "fees.txt").write_text(
        "Card fees are charged monthly on every billing statement.", encoding="utf-8"
    )

    report = _report(
        _evaluate(tiny_model_dir, splits, tmp_path, systems=["base_rag"], rag_k=1, rag_documents=docs)
    )

    assert report["systems"]["base_rag"]["context"][2] == ["repairs.md#0"]


def test_prompts_that_do_not_fit_drop_the_least_similar_example_first(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    row = chat_row("Label this message: where is my parcel", "shipping")
    shots = _prepared(classification_rows(6))
    everything, used = fitting_prompt(tokenizer, row, shots, max_tokens=10_000)
    assert used == shots
    length = len(tokenizer(everything, add_special_tokens=False)["input_ids"])

    prompt, used = fitting_prompt(tokenizer, row, shots, max_tokens=length + 64 - 1)

    assert used == shots[1:], "one example too many: the first (least similar) goes"
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= length - 1
    assert fitting_prompt(tokenizer, row, shots, max_tokens=1)[1] == [], (
        "the question alone when nothing fits"
    )


def _choice_logprob(model, tokenizer, prompt: str, answer: list[int]) -> float:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids + answer])).logits[0].float().log_softmax(-1)
    return sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(answer))


def test_multiple_choice_picks_the_most_likely_of_each_rows_choices(tiny_model_dir, tmp_path):
    questions = [
        ("Is water wet?", ["yes", "no", "maybe"], "yes"),
        ("Which city is the capital of France?", ["Paris", "Rome"], "Paris"),
        ("Does the drug lower blood pressure?", ["yes", "no", "maybe"], "maybe"),
        ("How many legs has a spider?", ["six", "eight", "ten", "four"], "eight"),
    ]
    rows = [{**chat_row(q, a), "choices": c} for q, c, a in questions]
    splits = (
        write_jsonl(tmp_path / "train.jsonl", _prepared(rows[:2])),
        write_jsonl(tmp_path / "validation.jsonl", _prepared(rows)),
    )

    report = _report(
        _evaluate(tiny_model_dir, splits, tmp_path, labels=None, systems=["base_zero_shot"], scoring="raw")
    )

    assert report["task"] == "multiple_choice" and report["headline"] == "accuracy"
    predictions = report["systems"]["base_zero_shot"]["predictions"]
    model, tokenizer = load_model(tiny_model_dir)
    for (question, choices, _), predicted in zip(questions, predictions, strict=True):
        prompt = render_prompt(tokenizer, [{"role": "user", "content": question}])
        scores = [
            _choice_logprob(model, tokenizer, prompt, ids) for ids in label_token_ids(tokenizer, choices)
        ]
        assert predicted == choices[max(range(len(choices)), key=scores.__getitem__)]
    correct = sum(p == a for p, (_, _, a) in zip(predictions, questions, strict=True))
    assert report["systems"]["base_zero_shot"]["accuracy"] == correct / 4


def test_a_multiple_choice_answer_outside_its_choices_is_an_error(tiny_model_dir, tmp_path):
    rows = _prepared([{**chat_row("Is water wet?", "perhaps"), "choices": ["yes", "no"]}] * 2)
    splits = (write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", rows))

    with pytest.raises(EvalError, match=r"split.jsonl:1: the answer 'perhaps' is not one of its choices"):
        _evaluate(tiny_model_dir, splits, tmp_path, labels=None, systems=["base_zero_shot"])


def test_generation_reports_every_metric_and_ranks_math_by_the_final_number(tiny_model_dir, tmp_path):
    rows = [chat_row(f"What is {i} plus {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}") for i in range(1, 7)]
    splits = (
        write_jsonl(tmp_path / "train.jsonl", _prepared(rows[:4])),
        write_jsonl(tmp_path / "validation.jsonl", _prepared(rows[4:])),
    )

    report = _report(
        _evaluate(
            tiny_model_dir, splits, tmp_path, labels=None, systems=["base_zero_shot", "base_rag"], rag_k=1
        )
    )

    assert report["task"] == "generation" and report["headline"] == "numeric_match"
    for metrics in report["systems"].values():
        assert {"exact_match", "numeric_match", "rouge_l", "bleu", "perplexity"} <= set(metrics)
        assert all(0 <= metrics[m] <= 1 for m in ("exact_match", "numeric_match", "rouge_l", "bleu"))
        assert metrics["perplexity"] > 1
    low, high = report["significance"]["intervals"]["base_rag"]
    assert low <= report["systems"]["base_rag"]["numeric_match"] <= high


def test_every_configurable_system_is_evaluated():
    from typing import get_args

    from specialize.config import EvalSystem
    from specialize.evaluate import SYSTEMS

    assert list(SYSTEMS) == list(get_args(EvalSystem))


def test_free_answers_report_how_often_no_label_is_named(tiny_model_dir, splits, tmp_path):
    report = _evaluate(tiny_model_dir, splits, tmp_path, systems=["base_zero_shot"], free_answers=True)
    metrics = report.metrics["base_zero_shot"]
    # the tiny random model answers gibberish: no free answer names a label, while label scoring still picks one
    assert len(metrics["free_answers"]) == 5
    assert metrics["invalid_answer_rate"] == 1.0 and metrics["free_accuracy"] == 0.0
    assert set(metrics["predictions"]) <= set(LABELS)


def test_a_capped_evaluation_is_stratified_and_says_what_it_covers(tiny_model_dir, tmp_path):
    rows = classification_rows(12, start=1000)  # four of each label
    splits = (
        write_jsonl(tmp_path / "train.jsonl", _prepared(classification_rows(6))),
        write_jsonl(tmp_path / "validation.jsonl", _prepared(rows)),
    )

    report = _report(_evaluate(tiny_model_dir, splits, tmp_path, systems=["base_zero_shot"], max_examples=3))

    assert report["sample"] == {
        "method": "stratified by label",
        "examples": 3,
        "of": 12,
        "labels_covered": 3,
        "labels": 3,
    }
    assert sorted(report["gold"]) == sorted(LABELS), "three examples, one of each label"
    assert report["n_examples"] == 3 and len(report["systems"]["base_zero_shot"]["predictions"]) == 3


def test_excluded_examples_are_left_out_by_source_and_the_report_counts_them(
    tiny_model_dir, splits, tmp_path
):
    train, validation = splits
    rows = [json.loads(line) for line in validation.read_text(encoding="utf-8").splitlines()]
    excluded = write_jsonl(tmp_path / "chosen.jsonl", [rows[0], rows[3]])  # e.g. a study's search sample
    report = _report(
        _evaluate(tiny_model_dir, splits, tmp_path, systems=["base_zero_shot"], exclude_examples=excluded)
    )
    assert report["n_examples"] == 3 and report["sample"]["excluded"] == 2
    assert report["gold"] == [rows[i]["label"] for i in (1, 2, 4)]
    everything = write_jsonl(tmp_path / "all.jsonl", rows)
    with pytest.raises(EvalError, match="leaves out every one of the 5 examples"):
        _evaluate(tiny_model_dir, splits, tmp_path, systems=["base_zero_shot"], exclude_examples=everything)


def test_a_base_systems_answers_are_kept_for_the_next_run_that_asks_the_same_model_the_same_questions(
    tiny_model_dir, splits, tmp_path
):
    systems = ["base_zero_shot", "base_few_shot"]
    first = _report(_evaluate(tiny_model_dir, splits, tmp_path / "a", systems=systems, free_answers=True))
    again = _report(_evaluate(tiny_model_dir, splits, tmp_path / "b", systems=systems, free_answers=True))
    assert first["answers_kept_from_earlier_runs"] == []
    assert again["answers_kept_from_earlier_runs"] == systems
    # exactly what computing them again gives: label scores to the last digit, every variant, free answers
    assert again["systems"] == first["systems"] and again["scoring"] == first["scoring"]
    assert again["significance"] == first["significance"]

    # other few-shot prompts are other questions; the zero-shot prompts are unchanged
    other = _report(_evaluate(tiny_model_dir, splits, tmp_path / "c", systems=systems, few_shot_k=2))
    assert other["answers_kept_from_earlier_runs"] == ["base_zero_shot"]

    # another model directory (here a copy: its files' times differ) is another model
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copy)
    fresh = _report(_evaluate(copy, splits, tmp_path / "d", systems=systems, free_answers=True))
    assert fresh["answers_kept_from_earlier_runs"] == [] and fresh["systems"] == first["systems"]


def test_kept_generations_are_the_generations(tiny_model_dir, tmp_path):
    rows = [chat_row(f"What is {i} plus {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}") for i in range(1, 7)]
    splits = (
        write_jsonl(tmp_path / "train.jsonl", _prepared(rows[:4])),
        write_jsonl(tmp_path / "validation.jsonl", _prepared(rows[4:])),
    )
    reports = [
        _report(_evaluate(tiny_model_dir, splits, tmp_path / name, labels=None, systems=["base_zero_shot"]))
        for name in ("a", "b")
    ]
    assert [r["answers_kept_from_earlier_runs"] for r in reports] == [[], ["base_zero_shot"]]
    assert reports[0]["systems"] == reports[1]["systems"]


def test_a_kept_answer_file_that_cannot_be_read_is_computed_again(
    tiny_model_dir, splits, tmp_path, fresh_answer_memo
):
    first = _report(_evaluate(tiny_model_dir, splits, tmp_path / "a", systems=["base_zero_shot"]))
    kept = list(fresh_answer_memo.iterdir())
    assert kept, "the first evaluation kept the base system's label scores"
    for path in kept:
        path.write_text('{"labels": ["bill', encoding="utf-8")  # cut short, as by a full disk
    again = _report(_evaluate(tiny_model_dir, splits, tmp_path / "b", systems=["base_zero_shot"]))
    assert again["answers_kept_from_earlier_runs"] == [] and again["systems"] == first["systems"]
    assert all(json.loads(path.read_text(encoding="utf-8")) for path in kept), "written again, whole"
