"""Retrieval for the few-shot and RAG baselines: BM25 over training examples or over a folder of documents.

A fine-tuned model has to beat what a prompt with the right context achieves, so the baselines retrieve the
examples (or passages) most similar to each question. BM25 (`bm25s`) needs no model, no GPU and no download,
and is the baseline a retrieval system has to beat too. The index holds training examples or documents only,
never evaluation rows; and a training example whose question is the evaluation question itself is skipped, so
a file that overlaps the training data cannot hand a RAG prompt the answer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from specialize.errors import EvalError

CHUNK_WORDS = 120  # passage length: a few sentences, so several passages fit a small model's context
CHUNK_OVERLAP = (
    30  # words repeated between neighbouring passages, so a sentence cut at a border is whole once
)
DOCUMENT_SUFFIXES = (".txt", ".md")


def question_text(row: dict[str, Any]) -> str:
    """The text a row is retrieved by: its last user turn (plain text for a text row)."""
    if "messages" not in row:
        return str(row.get("text", ""))
    users = [m["content"] for m in row["messages"] if m["role"] == "user"]
    return users[-1] if users else ""


class Retriever:
    """A BM25 index over texts; `search` gives the indices of the most similar ones, best first."""

    def __init__(self, texts: list[str]) -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG when imported, and would log every index build.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self._texts = [" ".join(t.lower().split()) for t in texts]
        self._index = bm25s.BM25()
        self._index.index(self._tokens(texts), show_progress=False)

    @staticmethod
    def _tokens(texts: list[str]) -> Any:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", show_progress=False)

    def search(self, query: str, k: int) -> list[int]:
        """The `k` texts most similar to `query`, best first, leaving out any text identical to the query."""
        n = len(self._texts)
        want = min(k + 1, n)  # one spare, for the copy of the query itself
        if want == 0:
            return []
        found, _ = self._index.retrieve(self._tokens([query]), k=want, show_progress=False)
        same = " ".join(query.lower().split())
        return [int(i) for i in found[0] if self._texts[int(i)] != same][:k]


class Passage(NamedTuple):
    """A piece of a document, and where it is from: `file#n`, the file relative to the folder and its n-th piece."""

    source: str
    text: str


def document_passages(folder: Path) -> list[Passage]:
    """The .txt and .md files under `folder`, cut into overlapping passages of about CHUNK_WORDS words."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES)
    step = CHUNK_WORDS - CHUNK_OVERLAP
    passages = []
    for path in files:
        try:
            words = path.read_text(encoding="utf-8").split()
        except UnicodeDecodeError:
            raise EvalError(
                f"eval.rag_documents: {path} is not UTF-8 text; convert it or remove it"
            ) from None
        name = path.relative_to(folder).as_posix()
        starts = range(0, max(len(words) - CHUNK_OVERLAP, 1), step) if words else range(0)
        passages += [
            Passage(f"{name}#{n}", " ".join(words[i : i + CHUNK_WORDS])) for n, i in enumerate(starts)
        ]
    if not passages:
        raise EvalError(
            f"eval.rag_documents: {folder} holds no .txt or .md text; add documents or remove the key to "
            "retrieve training examples"
        )
    return passages
