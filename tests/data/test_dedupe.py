"""Exact and near-duplicate removal: what counts as a duplicate, what does not, and where removed rows go."""

from __future__ import annotations

import json
import random

import numpy as np

from specialize.config import DataConfig
from specialize.data import prepare_data, read_prepared
from specialize.data.dedupe import (
    NUM_PERM,
    boilerplate,
    jaccard,
    near_duplicates,
    normalise,
    shingles,
    signatures,
    similarity,
)

WORDS = [
    "contract",
    "party",
    "notice",
    "term",
    "payment",
    "liability",
    "clause",
    "agreement",
    "license",
    "fee",
    "data",
    "service",
    "user",
    "account",
    "court",
    "law",
    "damages",
    "breach",
    "termination",
    "renewal",
    "period",
    "written",
    "consent",
    "assign",
    "transfer",
]


def _sentence(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def test_normalise_folds_case_width_and_space() -> None:
    assert normalise("  Ｈｅｌｌｏ\tWORLD\n ") == "hello world"


def test_shingles_are_word_trigrams_and_short_texts_are_one_shingle() -> None:
    assert len(shingles("one two three four")) == 2
    assert len(shingles("one two")) == 1
    assert shingles("") == set()
    assert shingles("One, two; THREE") == shingles("one two three")


def test_minhash_agreement_estimates_jaccard() -> None:
    rng = random.Random(0)
    base = _sentence(rng, 200).split()
    other = base[:150] + _sentence(rng, 50).split()
    a, b = shingles(" ".join(base)), shingles(" ".join(other))

    sig = signatures([a, b])

    estimate = float(np.mean(sig[0] == sig[1]))
    assert sig.shape == (2, NUM_PERM)
    assert abs(estimate - jaccard(a, b)) < 0.12


def test_near_duplicates_keep_the_first_and_name_it() -> None:
    rng = random.Random(1)
    text = _sentence(rng, 60)
    words = text.split()
    edited = " ".join(words[:-1] + ["changed"])
    sets = [shingles(t) for t in (text, _sentence(rng, 60), edited, _sentence(rng, 60))]

    (match,) = near_duplicates(sets, 0.85)

    assert (match.index, match.of) == (2, 0)
    assert match.similarity >= 0.85


def test_different_labels_are_never_near_duplicates() -> None:
    text = _sentence(random.Random(2), 60)
    sets = [shingles(text), shingles(text + " extra")]

    assert near_duplicates(sets, 0.85, labels=["a", "b"]) == []
    assert len(near_duplicates(sets, 0.85, labels=["a", "a"])) == 1


def test_a_shared_instruction_does_not_make_rows_alike() -> None:
    rng = random.Random(3)
    instruction = (
        "Classify the intent of this message. Reply with one label from this long list: " + _sentence(rng, 80)
    )
    rows = [f"{instruction}\n\nMessage: {_sentence(rng, 8)}" for _ in range(30)]
    sets = [shingles(r) for r in rows]

    assert jaccard(sets[0], sets[1]) > 0.85  # plain Jaccard: the instruction dominates every pair
    assert near_duplicates(sets, 0.85) == []


def test_boilerplate_one_row_lacks_still_counts_as_a_difference() -> None:
    rows = [f"she wrote note {i}" for i in range(10)] + [f"he wrote note {i}" for i in range(10)]
    sets = [shingles(r) for r in rows]
    common = boilerplate(sets)

    assert common == shingles("she wrote note") | shingles("he wrote note")
    assert similarity(sets[0], sets[10], common) == 1 / 3  # only "wrote note 0" is shared
    assert similarity(sets[0], sets[0], common) == 1.0
    assert near_duplicates(sets, 0.85) == []


def test_detection_is_deterministic() -> None:
    rng = random.Random(4)
    texts = [_sentence(rng, 30) for _ in range(50)]
    texts += [t + " tail" for t in texts[:10]]
    sets = [shingles(t) for t in texts]

    assert near_duplicates(sets, 0.8) == near_duplicates(sets, 0.8)
    assert {m.index for m in near_duplicates(sets, 0.8)} == set(range(50, 60))


def _chat(user: str, answer: str = "ok") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_prepare_rejects_near_duplicates_and_near_leaks_with_reasons(
    tmp_path, tiny_tokenizer, write_jsonl
) -> None:
    rng = random.Random(5)
    texts = [_sentence(rng, 40) for _ in range(12)]
    held = _sentence(rng, 40)
    train_rows = [_chat(t) for t in texts] + [_chat(texts[0] + " indeed"), _chat(held + " again")]
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    validation = write_jsonl(tmp_path / "validation.jsonl", [_chat(held), _chat(_sentence(rng, 40))])

    prepared = prepare_data(
        DataConfig(train=train, validation=validation, max_tokens=4096), tiny_tokenizer, tmp_path / "out"
    )

    rejects = {r["source"]: r for r in read_prepared(prepared.rejects_path)}
    assert rejects[f"{train}:13"]["kind"] == "near_duplicate"
    assert f"{train}:1 " in rejects[f"{train}:13"]["reason"] and "Jaccard" in rejects[f"{train}:13"]["reason"]
    assert rejects[f"{train}:14"]["kind"] == "near_leakage"
    assert f"{validation}:1" in rejects[f"{train}:14"]["reason"]
    audit = json.loads(prepared.audit_path.read_text(encoding="utf-8"))
    assert audit["duplicates"]["near"] == 1 and audit["leakage"]["near"] == 1
    assert prepared.n_train == 12 and prepared.n_validation == 2


def test_near_dedupe_can_be_switched_off(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    rng = random.Random(6)
    texts = [_sentence(rng, 40) for _ in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", [_chat(t) for t in texts] + [_chat(texts[0] + " indeed")])
    config = DataConfig(train=train, validation_fraction=0.2, max_tokens=4096, dedupe={"near": False})

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    assert prepared.n_rejected == 0 and prepared.n_train + prepared.n_validation == 11


def test_masked_rows_that_differ_only_in_personal_data_become_duplicates(
    tmp_path, tiny_tokenizer, write_jsonl
) -> None:
    rows = [_chat(f"question number {i}") for i in range(9)]
    rows += [_chat("write to ann@example.com today"), _chat("write to bob@example.org today")]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    config = DataConfig(train=train, validation_fraction=0.2, pii={"mode": "mask"})

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    (reject,) = read_prepared(prepared.rejects_path)
    assert reject["kind"] == "duplicate" and reject["source"] == f"{train}:11"
    assert reject["messages"][0]["content"] == "write to [EMAIL] today"
