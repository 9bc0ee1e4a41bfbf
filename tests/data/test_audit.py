"""The audit: label balance, conflicts, bias probe, lengths, estimate, grouped splits, and its stable keys."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.config import DataConfig
from specialize.data import check_data, encode_conversation, group_split, prepare_data, read_prepared
from specialize.data.audit import AUDIT_KEYS, histogram, length_stats
from specialize.data.tokens import REFERENCE_PARAMETERS, TokenCounter, training_estimate


def _row(user: str, label: str | None = None, **extra) -> dict:
    row = {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": label or "ok"}],
        **extra,
    }
    if label is not None:
        row["label"] = label
    return row


def _audit(prepared) -> dict:
    return json.loads(prepared.audit_path.read_text(encoding="utf-8"))


def test_audit_has_stable_keys_and_reports_imbalance(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rows = [_row(f"common case {i}", "common") for i in range(40)] + [
        _row(f"rare case {i}", "rare") for i in range(4)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    audit = _audit(
        prepare_data(DataConfig(train=train, validation_fraction=0.25), tiny_tokenizer, tmp_path / "o")
    )

    assert list(audit) == list(AUDIT_KEYS)
    assert audit["labels"] == {
        "common": {"train": 30, "validation": 10},
        "rare": {"train": 3, "validation": 1},
    }
    assert audit["imbalance_ratio"] == 10
    assert any(w.startswith("class imbalance 10.0:1") and "macro-F1" in w for w in audit["warnings"])
    assert audit["split"]["method"] == "stratified by label"
    assert audit["task"] == "classification"
    assert audit["tokens"]["counted_with"].endswith("(exact)")


def test_generation_audit_has_the_same_keys_without_labels(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [_row(f"question {i}") for i in range(10)])

    audit = _audit(
        prepare_data(DataConfig(train=train, validation_fraction=0.2), tiny_tokenizer, tmp_path / "o")
    )

    assert list(audit) == [k for k in AUDIT_KEYS if k not in ("labels", "imbalance_ratio")]
    assert audit["conflicts"] is None and audit["bias"] is None


def test_identical_inputs_with_different_labels_are_conflicts(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rows = [_row(f"text {i}", "a" if i % 2 else "b") for i in range(10)]
    rows += [_row("Ambiguous  case", "a"), _row("ambiguous case", "b")]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(
        tmp_path / "validation.jsonl", [_row("text 99", "a"), _row("AMBIGUOUS case", "c")]
    )

    audit = _audit(
        prepare_data(DataConfig(train=train, validation=validation), tiny_tokenizer, tmp_path / "o")
    )

    conflicts = audit["conflicts"]
    assert (conflicts["count"], conflicts["rows"], conflicts["across_splits"]) == (1, 3, 1)
    (listed,) = conflicts["examples"]
    assert listed["labels"] == {"a": 1, "b": 1, "c": 1}
    assert f"{train}:11" in listed["sources"]


def test_bias_probe_by_field_and_by_keywords(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rows = [_row(f"she wrote note {i}", "approve" if i < 9 else "deny", region="north") for i in range(10)]
    rows += [_row(f"he wrote note {i}", "approve" if i < 2 else "deny", region="south") for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    by_field = DataConfig(train=train, validation_fraction=0.2, bias={"field": "region"})
    by_words = DataConfig(
        train=train,
        validation_fraction=0.2,
        bias={"keywords": {"female": ["she", "her"], "male": ["he", "him"]}},
    )

    field = _audit(prepare_data(by_field, tiny_tokenizer, tmp_path / "a"))["bias"]
    words = _audit(prepare_data(by_words, tiny_tokenizer, tmp_path / "b"))["bias"]

    assert field["by"] == "field 'region'"
    assert field["groups"]["north"] == {"count": 10, "labels": {"approve": 0.9, "deny": 0.1}}
    assert field["max_gap"]["gap"] == 0.7 and {field["max_gap"]["highest"], field["max_gap"]["lowest"]} == {
        "north",
        "south",
    }
    assert words["groups"]["female"]["count"] == 10 and words["groups"]["male"]["count"] == 10
    assert words["max_gap"]["gap"] == 0.7


def test_long_texts_are_chunked_not_rejected(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    long_text = " ".join(f"word{i}" for i in range(300))
    rows = [{"text": f"document number {i} about the weather"} for i in range(9)] + [{"text": long_text}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    prepared = prepare_data(
        DataConfig(train=train, validation_fraction=0.2, max_tokens=128), tiny_tokenizer, tmp_path / "o"
    )

    audit = _audit(prepared)
    kept = read_prepared(prepared.train_path) + read_prepared(prepared.validation_path)
    chunks = sorted((r for r in kept if "chunk" in r), key=lambda r: r["chunk"])
    assert audit["task"] == "text" and audit["tokens"]["chunked_documents"] == 1
    assert len(chunks) >= 3 and "".join(r["text"] for r in chunks) == long_text
    assert max(audit["tokens"]["train"]["max"], audit["tokens"]["validation"]["max"]) <= 128
    assert all("messages" not in r for r in kept) and prepared.n_rejected == 0


def test_too_short_rows_are_rejected(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rows = [_row(f"a reasonably long question number {i}") for i in range(9)] + [_row("hi")]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    short = len(encode_conversation(tiny_tokenizer, rows[-1]["messages"]).input_ids)

    prepared = prepare_data(
        DataConfig(train=train, validation_fraction=0.2, min_tokens=short + 1), tiny_tokenizer, tmp_path / "o"
    )

    (reject,) = read_prepared(prepared.rejects_path)
    assert (reject["kind"], reject["source"]) == ("too_short", f"{train}:10")
    assert "data.min_tokens" in reject["reason"]


def test_length_statistics_and_histogram() -> None:
    stats = length_stats([10, 20, 30, 40, 1000])

    assert (stats["min"], stats["median"], stats["max"], stats["total"]) == (10, 30, 1000, 1100)
    assert histogram([10, 16, 17, 100, 5000]) == {"<=16": 2, "<=32": 1, "<=128": 1, "<=8192": 1}
    assert length_stats([]) is None


def test_time_estimate_scales_with_parameters_and_honours_a_configured_rate() -> None:
    small = TokenCounter(None, "m", "estimate", 2048, REFERENCE_PARAMETERS)
    big = TokenCounter(None, "m", "estimate", 2048, REFERENCE_PARAMETERS * 4)

    base = training_estimate(450_000, small, None)
    scaled = training_estimate(450_000, big, None)
    configured = training_estimate(450_000, big, 5000.0)

    assert base["seconds_per_epoch"] == 1000 and base["tokens_per_second"] == 450.0
    assert scaled["seconds_per_epoch"] == 4000
    assert configured["seconds_per_epoch"] == 90 and configured["basis"].startswith("estimate: data.tokens")
    assert "estimate" in base["basis"]


def test_group_leakage_from_a_validation_file_is_removed(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl", [_row(f"clause {i}", doc=f"contract-{i % 4}") for i in range(12)]
    )
    validation = write_jsonl(tmp_path / "validation.jsonl", [_row("other clause", doc="contract-1")])
    config = DataConfig(train=train, validation=validation, group_field="doc")

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "o")

    rejects = read_prepared(prepared.rejects_path)
    assert {r["kind"] for r in rejects} == {"group_leakage"} and len(rejects) == 3
    assert all(r["doc"] == "contract-1" for r in rejects)
    assert _audit(prepared)["leakage"]["group"] == 3


def test_without_a_validation_file_groups_stay_whole(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rows = [_row(f"clause {i}", "yes" if i % 3 else "no", doc=f"d{i // 3}") for i in range(60)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    prepared = prepare_data(
        DataConfig(train=train, group_field="doc", validation_fraction=0.2), tiny_tokenizer, tmp_path / "o"
    )

    train_docs = {r["doc"] for r in read_prepared(prepared.train_path)}
    val_docs = {r["doc"] for r in read_prepared(prepared.validation_path)}
    assert not train_docs & val_docs and val_docs
    assert _audit(prepared)["split"]["method"] == "grouped by 'doc', stratified by label"


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=50),
    labels=st.lists(st.sampled_from(["x", "y", None]), min_size=50, max_size=50),
    fraction=st.floats(0.05, 0.45),
    seed=st.integers(0, 1000),
)
def test_group_split_never_puts_a_group_in_both_splits(groups, labels, fraction, seed) -> None:
    items = list(range(len(groups)))
    labels = labels[: len(groups)]

    train, validation = group_split(items, labels, groups, fraction, seed)

    assert sorted(train + validation) == items
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    if len(set(groups)) >= 2:
        assert train  # a stratum never gives all its groups away
    assert group_split(items, labels, groups, fraction, seed) == (train, validation)


def test_check_without_a_cached_model_estimates_tokens_and_says_so(tmp_path, write_jsonl) -> None:
    rows = [_row(f"message {i} about billing", "billing" if i % 4 else "spam") for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    result = check_data(path)

    tokens = result.audit["tokens"]
    assert result.ok
    assert tokens["counted_with"].startswith("estimate") and "models pull" in tokens["counted_with"]
    assert any(w.startswith("token counts are estimates") for w in result.audit["warnings"])
    assert Counter(r for r in result.audit["labels"]) == Counter({"billing": 1, "spam": 1})
    assert result.audit["estimate"]["seconds_per_epoch"] > 0
