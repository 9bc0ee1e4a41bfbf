"""Seeded, stratified splits and samples, and `prepare_data`: cleaning, leakage, splitting and the audit."""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.config import DataConfig
from specialize.data import prepare_data, read_prepared
from specialize.data.split import seeded_sample, stratified_split
from specialize.errors import DataError


def test_every_label_with_two_examples_reaches_both_splits() -> None:
    labels = ["a"] * 40 + ["b"] * 5 + ["c"] * 2 + ["d"]
    items = list(range(len(labels)))

    train, validation = stratified_split(items, labels, 0.1, seed=0)

    in_train = Counter(labels[i] for i in train)
    in_validation = Counter(labels[i] for i in validation)
    for label in ("a", "b", "c"):
        assert in_train[label] >= 1
        assert in_validation[label] >= 1
    assert in_train["d"] == 1 and in_validation["d"] == 0
    assert in_validation["a"] == 4


def test_split_is_seeded_and_deterministic() -> None:
    labels = [str(i % 3) for i in range(60)]
    items = [f"x{i}" for i in range(60)]

    first = stratified_split(items, labels, 0.2, seed=1)

    assert stratified_split(items, labels, 0.2, seed=1) == first
    assert stratified_split(items, labels, 0.2, seed=2) != first


def test_unlabelled_items_form_one_group() -> None:
    items = list(range(20))

    train, validation = stratified_split(items, [None] * 20, 0.25, seed=0)

    assert len(validation) == 5
    assert sorted(train + validation) == items


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=60),
    fraction=st.floats(min_value=0.01, max_value=0.49),
    seed=st.integers(0, 2**16),
)
def test_split_partitions_and_keeps_order(labels: list[str | None], fraction: float, seed: int) -> None:
    items = list(range(len(labels)))

    train, validation = stratified_split(items, labels, fraction, seed)

    assert sorted(train + validation) == items
    assert train == sorted(train) and validation == sorted(validation)
    counts = Counter(labels)
    for label, n in counts.items():
        n_val = sum(labels[i] == label for i in validation)
        if n >= 2:
            assert 1 <= n_val <= n - 1
        else:
            assert n_val == 0


@settings(max_examples=40, deadline=None)
@given(n_items=st.integers(0, 50), n=st.integers(1, 60), seed=st.integers(0, 100))
def test_seeded_sample_keeps_order_and_size(n_items: int, n: int, seed: int) -> None:
    items = list(range(n_items))

    sample = seeded_sample(items, n, seed)

    assert len(sample) == min(n, n_items)
    assert sample == sorted(set(sample))
    assert seeded_sample(items, n, seed) == sample


# prepare_data: cleaning, leakage, splitting and the audit (`specialize.data.prepare_data`)


def _rows(write_jsonl, chat_row, path: pathlib.Path, texts: list[tuple[str, str]]) -> pathlib.Path:
    return write_jsonl(path, [chat_row(text, label, label) for text, label in texts])


def _labelled(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"message number {i}", ("red", "green", "blue")[i % 3]) for i in range(start, start + n)]


def _sources(rows: list[dict[str, Any]]) -> list[str]:
    return [r["source"] for r in rows]


def test_prepare_data_writes_splits_rejects_and_audit(tmp_path, tiny_tokenizer, chat_dataset) -> None:
    out = tmp_path / "run" / "data"

    prepared = prepare_data(
        DataConfig(train=chat_dataset.train, validation=chat_dataset.validation), tiny_tokenizer, out, seed=0
    )

    for path in (prepared.train_path, prepared.validation_path, prepared.rejects_path, prepared.audit_path):
        assert path.parent == out and path.is_file()
    assert (prepared.n_train, prepared.n_validation, prepared.n_rejected) == (48, 12, 0)
    assert prepared.labels == sorted(chat_dataset.labels)
    assert prepared.task == "classification"
    train = read_prepared(prepared.train_path)
    assert len(train) == 48 and all("label" in r and "messages" in r for r in train)
    assert read_prepared(prepared.rejects_path) == []
    audit = json.loads(prepared.audit_path.read_text(encoding="utf-8"))
    assert audit["task"] == "classification"
    assert audit["counts"] == {"train": 48, "validation": 12, "rejected": 0}
    assert audit["labels"] == {label: {"train": 16, "validation": 4} for label in chat_dataset.labels}
    assert audit["imbalance_ratio"] == 1
    assert (
        0
        < audit["tokens"]["train"]["min"]
        <= audit["tokens"]["train"]["median"]
        <= audit["tokens"]["train"]["max"]
    )


def test_duplicates_and_leaks_go_to_rejects_with_a_reason(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    texts = _labelled(12)
    train_texts = (
        texts + [("MESSAGE   number 0", "red"), ("message number 1", "green")] + [("held out 1", "red")]
    )
    validation_texts = _labelled(6, start=100) + [("Held  out 1", "red")]
    train = _rows(write_jsonl, chat_row, tmp_path / "train.jsonl", train_texts)
    validation = _rows(write_jsonl, chat_row, tmp_path / "validation.jsonl", validation_texts)

    prepared = prepare_data(DataConfig(train=train, validation=validation), tiny_tokenizer, tmp_path / "out")

    rejects = read_prepared(prepared.rejects_path)
    by_source = {r["source"]: r for r in rejects}
    assert set(by_source) == {f"{train}:13", f"{train}:14", f"{train}:15"}
    assert by_source[f"{train}:13"]["kind"] == "duplicate"
    assert f"{train}:1" in by_source[f"{train}:13"]["reason"]
    assert by_source[f"{train}:14"]["kind"] == "duplicate"
    assert by_source[f"{train}:15"]["kind"] == "leakage"
    assert f"{validation}:7" in by_source[f"{train}:15"]["reason"]
    assert all(r["split"] == "train" and r["reason"] and r["messages"] for r in rejects)
    kept = _sources(read_prepared(prepared.train_path)) + _sources(read_prepared(prepared.validation_path))
    assert len(kept) + len(rejects) == len(train_texts) + len(validation_texts)
    assert not set(kept) & set(by_source)
    audit = json.loads(prepared.audit_path.read_text(encoding="utf-8"))
    assert audit["rejected_by_kind"] == {"duplicate": 2, "leakage": 1}


def test_duplicates_inside_validation_are_rejected(tmp_path, tiny_tokenizer, write_jsonl, chat_row) -> None:
    train = _rows(write_jsonl, chat_row, tmp_path / "train.jsonl", _labelled(9))
    validation = _rows(
        write_jsonl,
        chat_row,
        tmp_path / "validation.jsonl",
        _labelled(3, start=50) + [("Message number 50", "blue")],
    )

    prepared = prepare_data(DataConfig(train=train, validation=validation), tiny_tokenizer, tmp_path / "out")

    (reject,) = read_prepared(prepared.rejects_path)
    assert (reject["split"], reject["kind"], reject["source"]) == (
        "validation",
        "duplicate",
        f"{validation}:4",
    )
    assert prepared.n_validation == 3


def test_without_a_validation_file_a_stratified_split_is_held_out(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    texts = _labelled(30)
    train = _rows(write_jsonl, chat_row, tmp_path / "train.jsonl", texts)
    config = DataConfig(train=train, validation_fraction=0.2)

    first = prepare_data(config, tiny_tokenizer, tmp_path / "a", seed=3)
    again = prepare_data(config, tiny_tokenizer, tmp_path / "b", seed=3)

    validation = read_prepared(first.validation_path)
    assert first.n_train + first.n_validation == 30
    assert {r["label"] for r in validation} == {"red", "green", "blue"}
    assert validation == read_prepared(again.validation_path)
    assert not set(_sources(validation)) & set(_sources(read_prepared(first.train_path)))


def test_too_long_and_unsampled_rows_are_rejected_not_dropped(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    texts = _labelled(20) + [("word " * 200, "red")]
    train = _rows(write_jsonl, chat_row, tmp_path / "train.jsonl", texts)
    validation = _rows(write_jsonl, chat_row, tmp_path / "validation.jsonl", _labelled(3, start=90))
    config = DataConfig(train=train, validation=validation, max_tokens=100, max_train_examples=10)

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    kinds = Counter(r["kind"] for r in read_prepared(prepared.rejects_path))
    assert kinds == {"too_long": 1, "not_sampled": 10}
    assert prepared.n_train == 10
    assert prepared.n_train + prepared.n_validation + prepared.n_rejected == len(texts) + 3


def test_system_prompt_is_put_before_every_conversation(tmp_path, tiny_tokenizer, chat_dataset) -> None:
    config = DataConfig(
        train=chat_dataset.train, validation=chat_dataset.validation, system_prompt="Be brief."
    )

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    for path in (prepared.train_path, prepared.validation_path):
        assert all(
            r["messages"][0] == {"role": "system", "content": "Be brief."} for r in read_prepared(path)
        )


def test_generation_data_has_no_labels(tmp_path, tiny_tokenizer, write_jsonl, chat_row) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl", [chat_row(f"question {i}", f"answer {i}") for i in range(10)]
    )

    prepared = prepare_data(
        DataConfig(train=train, validation_fraction=0.2), tiny_tokenizer, tmp_path / "out"
    )

    assert prepared.labels is None
    assert prepared.task == "generation"
    assert "labels" not in json.loads(prepared.audit_path.read_text(encoding="utf-8"))


def test_nothing_left_after_cleaning_points_at_a_rejects_file_that_exists(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    texts = _labelled(6)
    train = _rows(write_jsonl, chat_row, tmp_path / "train.jsonl", texts)
    validation = _rows(write_jsonl, chat_row, tmp_path / "validation.jsonl", texts)
    out = tmp_path / "out"

    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=train, validation=validation), tiny_tokenizer, out)

    message = str(info.value)
    assert "0 training" in message
    assert str(out / "rejects.jsonl") in message
    rejects = read_prepared(out / "rejects.jsonl")  # the error sends the user there: it must exist
    assert len(rejects) == 6 and {r["kind"] for r in rejects} == {"leakage"}
