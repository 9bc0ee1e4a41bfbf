"""The trial metric is the evaluation's figure: a trial's macro-F1 equals what `evaluate` reports for the
fine-tuned system on the same rows under the same `eval.scoring`; the sample it is computed on is stratified by
label."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import chat_row, write_chat_dataset, write_jsonl

from specialize.config import EvalConfig, TrainConfig
from specialize.data import PreparedData, read_prepared
from specialize.evaluate.calibration import Scoring
from specialize.evaluate.evaluation import evaluate
from specialize.models import load_model
from specialize.search.metric import ValidationMetric
from specialize.search.study import write_sample
from specialize.search.worker import SAMPLE_FILE
from specialize.train import train


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, tiny_model_dir):
    """A few steps of LoRA on the 3-label set, and the evaluation's report of it under `best` scoring."""
    directory = tmp_path_factory.mktemp("metric")
    data = write_chat_dataset(directory)
    trained = train(
        TrainConfig(max_steps=6, batch_size=4, learning_rate=5e-3),
        tiny_model_dir,
        data.train,
        data.validation,
        directory / "train",
        progress=False,
    )
    report = evaluate(
        EvalConfig(systems=["fine_tuned"], scoring="best"),
        tiny_model_dir,
        trained.output_dir,
        data.train,
        data.validation,
        directory / "eval",
        list(data.labels),
        progress=False,
    )
    return data, trained.output_dir, json.loads(report.report_path.read_text())


@pytest.mark.parametrize("scoring", [*(str(s) for s in Scoring), "best"])
def test_the_trial_metric_is_the_evaluations_fine_tuned_macro_f1_under_the_same_scoring(
    fine_tuned, tiny_model_dir, scoring
):
    from peft import PeftModel

    data, adapter, report = fine_tuned
    model, tokenizer = load_model(tiny_model_dir)
    tuned = PeftModel.from_pretrained(model, adapter).eval()
    metric = ValidationMetric(
        read_prepared(data.validation),
        list(data.labels),
        tokenizer,
        model.config.max_position_embeddings,
        0,
        EvalConfig(scoring=scoring),
        read_prepared(data.train),
    )

    value = metric(tuned)

    assert metric.name == "macro_f1" and metric.maximize
    variants = report["scoring"]["variants"]["fine_tuned"]
    if scoring == "best":  # the variant the evaluation chose, and the figure it reports the fine-tune with
        assert metric.scoring == report["scoring"]["chosen"]["fine_tuned"]
        assert value == report["systems"]["fine_tuned"]["macro_f1"]
        assert value == max(v["value"] for v in variants.values())
    else:
        assert metric.scoring == scoring
        assert value == variants[scoring]["value"]


def test_the_sample_of_a_labelled_split_covers_every_label_before_any_twice(tmp_path, caplog):
    labels = [f"intent_{i:02d}" for i in range(20)]
    # 20 labels, unevenly common (1 to 5 rows each): a plain random 30 would miss several of the rare ones
    rows = [
        chat_row(f"message {label} {j}", label, label)
        for i, label in enumerate(labels)
        for j in range(1 + i % 5)
    ]
    directory = tmp_path / "data"
    write_jsonl(directory / "validation.jsonl", rows)
    data = PreparedData(directory, labels, 0, len(rows), 0)
    search = tmp_path / "search"
    search.mkdir()

    chosen = write_sample(search, data, 30, seed=3)

    counts = Counter(r["label"] for r in chosen)
    assert len(chosen) == 30 and set(counts) == set(labels), "every label in the sample"
    assert read_prepared(search / SAMPLE_FILE) == chosen, "the file is the sample"
    assert all(r in rows for r in chosen) and len({r["messages"][0]["content"] for r in chosen}) == 30
    assert write_sample(search, data, 30, seed=3) == chosen, "the same sample wherever it is drawn"
    by_size = Counter(1 + labels.index(label) % 5 for label in counts for _ in range(counts[label]))
    assert by_size[5] > by_size[1], "past one each, the common labels get more, as in the split"
    # 1.5 rows per label: its macro-F1 cannot rank trials, and the search says so; 3 per label is enough
    [thin] = [r.getMessage() for r in caplog.records if "examples per label" in r.getMessage()][:1]
    assert "has 1.5 examples per label (30 over 20 labels)" in thin and "--sample-from unused-train" in thin
    caplog.clear()
    write_sample(search, data, 60, seed=3)
    assert not [r for r in caplog.records if "examples per label" in r.getMessage()]


def test_multiple_choice_is_read_as_the_evaluation_reads_it(tmp_path, tiny_model_dir):
    # The base model (no adapter) stands in for a trial's: the scoring is the same function of the model either way
    questions = [
        ("Is water wet?", ["yes", "no", "maybe"], "yes"),
        ("Which city is the capital of France?", ["Paris", "Rome"], "Paris"),
        ("Does the drug lower blood pressure?", ["yes", "no", "maybe"], "maybe"),
        ("How many legs has a spider?", ["six", "eight", "ten", "four"], "eight"),
        ("Is the contract term fair?", ["yes", "no", "maybe"], "no"),
        ("Which is a prime number?", ["four", "six", "seven"], "seven"),
    ]
    rows = [{**chat_row(q, a), "choices": c} for q, c, a in questions]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows[:3])
    validation_file = write_jsonl(tmp_path / "validation.jsonl", rows)
    report = json.loads(
        evaluate(
            EvalConfig(systems=["base_zero_shot"], scoring="best"),
            tiny_model_dir,
            None,
            train_file,
            validation_file,
            tmp_path / "eval",
            None,
            progress=False,
        ).report_path.read_text()
    )
    model, tokenizer = load_model(tiny_model_dir)
    context = model.config.max_position_embeddings
    metric = ValidationMetric(rows, None, tokenizer, context, 0, EvalConfig(scoring="best"), rows[:3])

    value = metric(model.eval())

    assert metric.task == "multiple_choice" and metric.name == "accuracy"
    assert metric.scoring == report["scoring"]["chosen"]["base_zero_shot"]
    assert value == report["systems"]["base_zero_shot"]["accuracy"]
