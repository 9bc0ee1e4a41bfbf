"""The prompt each evaluated system sees: the question alone, after solved examples, or after retrieved passages;
and the question-free prompts that label-scoring variants divide out.

Context comes ordered least similar first, so that the most similar example or passage sits next to the question
and, when the prompt is too long for the model, the least similar one is the first to go.
"""

from __future__ import annotations

import random
from typing import Any

from specialize.config import EvalConfig
from specialize.data import render_prompt
from specialize.evaluate.retrieval import Retriever, document_passages, question_text
from specialize.evaluate.systems import Prompting

ANSWER_ROOM = 64  # tokens left free after the prompt for the answer
# Content-free inputs of contextual calibration (Zhao et al. 2021): no content, in three surface forms, so that
# no single form's own prior stands for "no question".
CONTENT_FREE = ("N/A", "", "[MASK]")


def few_shot_messages(row: dict[str, Any], shots: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The row's conversation up to its last user turn, preceded by solved training examples as earlier turns."""
    messages = row["messages"][:-1]
    system = [m for m in messages[:1] if m["role"] == "system"]
    examples = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return system + examples + messages[len(system) :]


def passage_messages(row: dict[str, Any], passages: list[str]) -> list[dict[str, str]]:
    """The row's conversation up to its last user turn, with the passages quoted before that turn's text."""
    messages = [dict(m) for m in row["messages"][:-1]]
    if passages:
        quoted = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
        last = messages[-1]
        last["content"] = f"Context that may help:\n{quoted}\n\n{last['content']}"
    return messages


def fitting_prompt(
    tokenizer: Any, row: dict[str, Any], context: list[Any], max_tokens: int, passages: bool = False
) -> tuple[str, list[Any]]:
    """The prompt with as much of `context` as fits `max_tokens` with room to answer, and the items it holds.

    `context` is solved examples (rows), or passages (objects with a `text`) when `passages` is set. Items are
    dropped from the front of `context`, the least similar end.
    """
    items = list(context)
    while True:
        if passages:
            messages = passage_messages(row, [p.text for p in items])
        else:
            messages = few_shot_messages(row, items)
        prompt = render_prompt(tokenizer, messages)
        if (
            not items
            or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_tokens - ANSWER_ROOM
        ):
            return prompt, items
        items.pop(0)


def input_slot(texts: list[str]) -> tuple[str, str]:
    """The task instruction around the input in the rows' last user turns: their common prefix and suffix.

    Rows of a task repeat the same instruction and differ in the input ("...Reply with one label.\\n\\nClause:
    <clause>"), so what every row shares before and after the part that varies is the instruction. Both are cut
    back to whitespace so that no word of an input is taken for instruction. Fewer than two distinct texts say
    nothing about where the input is: then the whole turn is the input.
    """
    distinct = list(dict.fromkeys(texts))
    if len(distinct) < 2:
        return "", ""
    shortest = min(len(t) for t in distinct)
    first = distinct[0]
    n = next((i for i in range(shortest) if any(t[i] != first[i] for t in distinct)), shortest)
    m = next(
        (i for i in range(shortest - n) if any(t[-1 - i] != first[-1 - i] for t in distinct)), shortest - n
    )
    prefix, suffix = first[:n], first[len(first) - m :] if m else ""
    if prefix and not prefix[-1].isspace():
        prefix = prefix[: max(prefix.rfind(c) for c in " \n\t") + 1]
    if suffix and not suffix[0].isspace():
        cut = [i for i in (suffix.find(c) for c in " \n\t") if i >= 0]
        suffix = suffix[min(cut) :] if cut else ""
    return prefix, suffix


def with_input(row: dict[str, Any], text: str) -> dict[str, Any]:
    """The row with its last user turn's content replaced by `text` (its answer and earlier turns kept)."""
    messages = [dict(m) for m in row["messages"]]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = text
    return {**row, "messages": messages}


class SystemPrompts:
    """The prompts of each kind of context, built once and shared by the systems that use them.

    Alongside each prompt: where its context came from (the `source` of each training example, or `file#n` of
    each passage), so a report shows what a retrieval system was given and that it never saw the question.
    """

    def __init__(
        self,
        config: EvalConfig,
        tokenizer: Any,
        rows: list[dict[str, Any]],
        shots: list[dict[str, Any]],
        context: int,
        seed: int,
    ) -> None:
        self.config, self.tokenizer, self.rows, self.shots = config, tokenizer, rows, shots
        self.context, self.seed = context, seed
        self._built: dict[Prompting, tuple[list[str], list[list[str]]]] = {}

    def for_context(self, kind: Prompting) -> tuple[list[str], list[list[str]]]:
        """Each evaluated row's prompt, and the sources of the context it holds."""
        if kind not in self._built:
            self._built[kind] = self._build(kind)
        return self._built[kind]

    def question_free(self, kind: Prompting) -> tuple[list[str], str]:
        """The prompts label-scoring variants divide out: the system's prompt with each content-free input in
        place of the question (`calibrated`), and the bare task instruction (`pmi`).

        The instruction is what the evaluated and training rows' last user turns share around their input
        (`input_slot`). Solved examples that every question of the system sees (random few-shot) stay in the
        content-free prompts, as in Zhao et al.; examples or passages retrieved per question do not, since
        there is no question to retrieve them for. The bare instruction has no examples at all.
        """
        users = [question_text(r) for r in [*self.rows, *self.shots] if "messages" in r]
        prefix, suffix = input_slot(users)
        template = self.rows[0]
        fixed = self._random_shots() if self._shared_shots(kind) else []
        free = [
            fitting_prompt(
                self.tokenizer, with_input(template, prefix + filler + suffix), fixed, self.context
            )[0]
            for filler in CONTENT_FREE
        ]
        bare = with_input(template, (prefix + suffix).strip())
        return free, render_prompt(self.tokenizer, few_shot_messages(bare, []))

    def _shared_shots(self, kind: Prompting) -> bool:
        return kind == Prompting.FEW_SHOT and self.config.few_shot_selection == "random"

    def _random_shots(self) -> list[dict[str, Any]]:
        # One seeded draw serves every question (the usual k-shot protocol); identical demonstrations also
        # make the prompts share a long prefix that is computed once.
        return random.Random(self.seed).sample(self.shots, min(self.config.few_shot_k, len(self.shots)))

    def _build(self, kind: Prompting) -> tuple[list[str], list[list[str]]]:
        config = self.config
        documents = config.rag_documents if kind == Prompting.RAG else None
        passages = documents is not None
        if kind == Prompting.ZERO_SHOT:
            chosen: list[list[Any]] = [[] for _ in self.rows]
        elif self._shared_shots(kind):
            drawn = self._random_shots()
            chosen = [drawn for _ in self.rows]
        else:
            pool: list[Any] = document_passages(documents) if documents is not None else self.shots
            index = Retriever([p.text for p in pool] if passages else [question_text(s) for s in pool])
            k = config.few_shot_k if kind == Prompting.FEW_SHOT else config.rag_k
            # Least similar first: the most similar item sits next to the question and is the last to be cut.
            chosen = [[pool[i] for i in reversed(index.search(question_text(row), k))] for row in self.rows]
        prompts, sources = [], []
        for row, items in zip(self.rows, chosen, strict=True):
            prompt, used = fitting_prompt(self.tokenizer, row, items, self.context, passages=passages)
            prompts.append(prompt)
            sources.append([item.source if passages else str(item.get("source", "")) for item in used])
        return prompts, sources
