"""BM25 retrieval finds what is similar, never the question itself, and cuts documents into passages."""

from __future__ import annotations

import pytest

from specialize.errors import EvalError
from specialize.evaluate.retrieval import CHUNK_WORDS, Retriever, document_passages, question_text

TRAIN = [
    "please refund the invoice for my order",
    "where is my delivery, the parcel is late",
    "win a free prize now, click the link",
    "my card payment failed twice at the shop",
    "the courier left the package at the wrong house",
]


def test_bm25_finds_the_planted_near_duplicate():
    planted = "the espresso machine arrived with a cracked water tank"
    index = Retriever([*TRAIN, planted])

    found = index.search("my espresso machine came with a cracked tank", k=2)

    assert found[0] == len(TRAIN)
    assert len(found) == 2


def test_the_question_itself_is_never_retrieved():
    index = Retriever(TRAIN)

    found = index.search("  Please refund the INVOICE for my order ", k=3)

    assert 0 not in found
    assert len(found) == 3


def test_k_larger_than_the_index_returns_everything_else():
    assert sorted(Retriever(TRAIN[:2]).search("refund", k=5)) == [0, 1]


def test_question_text_is_the_last_user_turn():
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "answer"},
        ]
    }
    assert question_text(row) == "second"


def test_documents_are_cut_into_overlapping_passages(tmp_path):
    words = [f"w{i}" for i in range(300)]
    (tmp_path / "guide.md").write_text(" ".join(words), encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "faq.txt").write_text("refunds take five days", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")

    found = document_passages(tmp_path)
    passages = [p.text for p in found]

    assert passages[0].split() == words[:CHUNK_WORDS]
    assert all(len(p.split()) <= CHUNK_WORDS for p in passages)
    assert {w for p in passages[:-1] for w in p.split()} == set(words), "every word is in some passage"
    assert set(passages[0].split()) & set(passages[1].split()), "neighbouring passages overlap"
    assert passages[-1] == "refunds take five days"
    assert [p.source for p in found][:2] == ["guide.md#0", "guide.md#1"]
    assert found[-1].source == "sub/faq.txt#0"


def test_a_folder_without_documents_is_an_error(tmp_path):
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(EvalError, match="no .txt or .md"):
        document_passages(tmp_path)
