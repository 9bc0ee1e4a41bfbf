"""The prompt each evaluated system sees: the question alone, after solved examples, or after retrieved passages.

Context comes ordered least similar first, so that the most similar example or passage sits next to the question
and, when the prompt is too long for the model, the least similar one is the first to go.
"""

from __future__ import annotations

from typing import Any

from specialize.data import render_prompt

ANSWER_ROOM = 64  # tokens left free after the prompt for the answer


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
