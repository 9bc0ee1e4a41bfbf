"""The base model's chat template, and which tokens a model learns from.

Chat examples (including the prompt + chosen answer of a preference pair) go through the chat template;
plain-text examples for continued pre-training do not (`encode_text`).

Training computes the loss on assistant tokens only. The mask is found on the rendered text, not by re-tokenising
prefixes: a chat template renders `messages[:i]` plus the generation prompt as a string prefix of the whole
conversation, and the fast tokenizer's offsets map those character spans onto tokens, whatever the tokenizer merges
across the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specialize.errors import ModelNotFoundError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids of one conversation, and the training target of each (IGNORE where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Put the configured system prompt first, unless the conversation brings its own."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a model continues to answer the last user turn."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The whole conversation as the model sees it in training."""
    return tokenizer.apply_chat_template(messages, tokenize=False)


def encode_text(tokenizer: Any, text: str) -> Encoded:
    """Tokenise plain text for continued pre-training: no template, every token a target, then end-of-sequence.

    The end token teaches the model where a document stops; without it, packed documents run into each other.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return Encoded(ids, list(ids))


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> Encoded:
    """Tokenise a whole conversation; every assistant turn (with its end-of-turn token) is a target."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render_prompt(tokenizer, messages[:i])
        if not full.startswith(prompt):
            raise ModelNotFoundError(
                "the base model's chat template renders a conversation's beginning differently from the whole "
                "conversation, so assistant turns cannot be located; use a model with a standard chat template"
            )
        spans.append((len(prompt), len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if any(start <= a and b <= end and b > a for start, end in spans):
            labels[t] = ids[t]
    return Encoded(ids, _trim_trailing_whitespace(tokenizer, ids, labels))


def _trim_trailing_whitespace(tokenizer: Any, ids: list[int], labels: list[int]) -> list[int]:
    """Take the whitespace the template puts after an end-of-turn token out of the loss.

    The model should learn to stop at the end-of-turn token, not to emit template filler after it.
    """
    out = list(labels)
    for end in range(len(ids)):
        t = end
        span_ends_here = out[end] != IGNORE and (end + 1 == len(ids) or out[end + 1] == IGNORE)
        while span_ends_here and t >= 0 and out[t] != IGNORE and not tokenizer.decode([ids[t]]).strip():
            out[t] = IGNORE
            t -= 1
    return out
