"""Chat templating: the loss is taken on exactly the assistant turns and their end-of-turn token."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.data import encode_conversation, render_prompt
from specialize.data.template import IGNORE, with_system

END = "<|im_end|>"


def _target_runs(tokenizer: Any, encoded: Any) -> list[str]:
    """Decoded text of each maximal run of target tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        is_target = label != IGNORE
        if is_target:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = is_target
    return [tokenizer.decode(run) for run in runs]


def _conversation(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    return messages + [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def test_only_the_assistant_answer_and_end_token_are_targets(tiny_tokenizer) -> None:
    messages = _conversation("What is the capital of France?", "Paris.")

    encoded = encode_conversation(tiny_tokenizer, messages)

    assert _target_runs(tiny_tokenizer, encoded) == ["Paris." + END]
    assert encoded.n_target == sum(label != IGNORE for label in encoded.labels)
    assert tiny_tokenizer.decode(encoded.input_ids) == tiny_tokenizer.apply_chat_template(
        messages, tokenize=False
    )


def test_the_prompt_is_not_a_target(tiny_tokenizer) -> None:
    messages = _conversation("What is the capital of France?", "Paris.")
    encoded = encode_conversation(tiny_tokenizer, messages)
    prompt_ids = tiny_tokenizer(render_prompt(tiny_tokenizer, messages[:1]), add_special_tokens=False)[
        "input_ids"
    ]

    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in encoded.labels[: len(prompt_ids)])


def test_every_assistant_turn_of_a_multi_turn_conversation_is_a_target(tiny_tokenizer) -> None:
    messages = _conversation(
        "Capital of France?", "Paris.", "And of Italy?", "Rome, of course.", system="Be brief."
    )

    encoded = encode_conversation(tiny_tokenizer, messages)

    assert _target_runs(tiny_tokenizer, encoded) == ["Paris." + END, "Rome, of course." + END]


def test_the_newline_after_the_end_token_is_not_a_target(tiny_tokenizer) -> None:
    encoded = encode_conversation(tiny_tokenizer, _conversation("q", "a"))

    assert tiny_tokenizer.decode(encoded.input_ids[-1:]) == "\n"
    assert encoded.labels[-1] == IGNORE
    assert encoded.labels[-2] == tiny_tokenizer.convert_tokens_to_ids(END)


_content = (
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)
    .map(str.strip)
    .filter(lambda s: bool(s) and "<|" not in s)
)


@settings(max_examples=40, deadline=None)
@given(turns=st.lists(st.tuples(_content, _content), min_size=1, max_size=3))
def test_targets_are_exactly_the_assistant_contents(tiny_tokenizer, turns: list[tuple[str, str]]) -> None:
    messages = _conversation(*[text for pair in turns for text in pair])

    encoded = encode_conversation(tiny_tokenizer, messages)

    assert _target_runs(tiny_tokenizer, encoded) == [answer + END for _, answer in turns]


def test_with_system_puts_the_prompt_first_unless_one_is_given() -> None:
    messages = _conversation("q", "a")

    assert with_system(messages, None) == messages
    assert with_system(messages, "Be brief.") == [{"role": "system", "content": "Be brief."}, *messages]
    own = _conversation("q", "a", system="Mine.")
    assert with_system(own, "Be brief.") == own


def test_render_prompt_ends_with_the_assistant_header(tiny_tokenizer) -> None:
    prompt = render_prompt(tiny_tokenizer, _conversation("Hello?"))

    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Hello?" in prompt
