"""Reading chat JSONL: every problem of a file is reported at once, each with its file and line."""

from __future__ import annotations

import json
import pathlib

import pytest

from specialize.config import DataConfig
from specialize.data import load_examples, read_chat_jsonl
from specialize.errors import DataError


def _problems(path: pathlib.Path, label_field: str = "label") -> DataError:
    with pytest.raises(DataError) as info:
        read_chat_jsonl(path, label_field)
    return info.value


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_valid_file_reads_every_row_in_order(tmp_path, write_jsonl, chat_row) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q1", "a", "a", id="r1"), chat_row("q2", "b", "b")])

    examples = read_chat_jsonl(path)

    assert [e.line for e in examples] == [1, 2]
    assert [e.label for e in examples] == ["a", "b"]
    assert examples[0].messages == [_user("q1"), _assistant("a")]
    assert examples[0].source == str(path)
    assert examples[0].to_json() == {
        "messages": [_user("q1"), _assistant("a")],
        "label": "a",
        "id": "r1",
        "source": f"{path}:1",
    }


def test_unlabelled_file_reads_as_generation(tmp_path, write_jsonl, chat_row) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q1", "a1"), chat_row("q2", "a2")])

    assert [e.label for e in read_chat_jsonl(path)] == [None, None]


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path, write_jsonl, chat_row) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q1", "a"), "", "   ", chat_row("q2", "b")])

    assert [e.line for e in read_chat_jsonl(path)] == [1, 4]


def test_every_bad_line_is_listed_at_once_with_file_and_line(tmp_path, write_jsonl, chat_row) -> None:
    bad_role = {"messages": [{"role": "human", "content": "q"}, _assistant("a")]}
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [chat_row("q1", "a"), '{"messages": [', chat_row("q3", "b"), bad_role, chat_row("q5", "c")],
    )

    error = _problems(path)

    assert len(error.problems) == 2
    assert error.problems[0].startswith(f"{path}:2:")
    assert "JSON" in error.problems[0]
    assert error.problems[1].startswith(f"{path}:4:")
    assert "human" in error.problems[1]
    assert f"{path}:2:" in str(error) and f"{path}:4:" in str(error)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ([1, 2], "JSON object"),
        ({"text": "no messages"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hello", _assistant("a")]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": ""}, _assistant("a")]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}, _assistant("a")]}, "messages[0].content"),
        ({"messages": [_user("q"), {"role": "bot", "content": "a"}]}, "'bot'"),
        ({"messages": [_user("q"), _assistant("a"), _user("again")]}, "last message"),
        ({"messages": [{"role": "system", "content": "s"}]}, "last message"),
        ({"messages": [_assistant("a")]}, "turn 1"),
        ({"messages": [_user("q"), _user("q2"), _assistant("a")]}, "turn 2"),
        ({"messages": [_user("q"), {"role": "system", "content": "s"}, _assistant("a")]}, "system"),
        ({"messages": [_user("q"), _assistant("a")], "label": ["x"]}, "label"),
    ],
)
def test_invalid_row_is_explained(tmp_path, write_jsonl, chat_row, row, words: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("fine", "ok"), row])

    error = _problems(path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{path}:2:")
    assert words in error.problems[0]


def test_multi_turn_with_system_prompt_is_valid(tmp_path, write_jsonl) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            _user("q1"),
            _assistant("a1"),
            _user("q2"),
            _assistant("a2"),
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])

    (example,) = read_chat_jsonl(path)

    assert [m["role"] for m in example.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_extra_message_keys_are_dropped_and_extra_row_keys_kept(tmp_path, write_jsonl) -> None:
    row = {
        "messages": [{"role": "user", "content": "q", "name": "x"}, _assistant("a")],
        "id": 7,
        "label": "l",
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])

    (example,) = read_chat_jsonl(path)

    assert example.messages[0] == _user("q")
    assert example.extra == {"id": 7}


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path, chat_row) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps(chat_row("q", "a")).encode()
    path.write_bytes(good + b"\n" + b'{"messages": "caf\xe9"}\n' + good + b"\n")

    error = _problems(path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{path}:2:")
    assert "UTF-8" in error.problems[0]


def test_missing_file_is_named(tmp_path) -> None:
    path = tmp_path / "missing.jsonl"

    error = _problems(path)

    assert str(path) in str(error)
    assert "does not exist" in str(error)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")

    error = _problems(path)

    assert str(path) in str(error)
    assert "no examples" in str(error)


def test_label_missing_on_some_rows_names_those_rows(tmp_path, write_jsonl, chat_row) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [chat_row("q1", "a", "a"), chat_row("q2", "b"), chat_row("q3", "a", "a"), chat_row("q4", "b")],
    )

    error = _problems(path)

    assert [p.split(": ")[0] for p in error.problems] == [f"{path}:2", f"{path}:4"]
    assert all("'label'" in p for p in error.problems)


def test_label_missing_is_reported_together_with_other_problems(tmp_path, write_jsonl, chat_row) -> None:
    # "all problems are collected before raising one DataError, so a user fixes a file in one pass"
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [chat_row("q1", "a", "a"), "not json", chat_row("q3", "b"), chat_row("q4", "a", "a")],
    )

    error = _problems(path)

    assert any(p.startswith(f"{path}:2:") for p in error.problems)
    assert any(p.startswith(f"{path}:3:") and "label" in p for p in error.problems)


def test_custom_label_field(tmp_path, write_jsonl, chat_row) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q", "yes", category="yes")])

    (example,) = read_chat_jsonl(path, label_field="category")

    assert example.label == "yes"


def test_long_lists_of_problems_are_cut_but_all_kept(tmp_path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["bad"] * 30)

    error = _problems(path)

    assert len(error.problems) == 30
    assert "10 more" in str(error)


def test_load_examples_reports_problems_of_both_files(tmp_path, write_jsonl, chat_row) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row("q", "a"), "{oops"])
    validation = write_jsonl(tmp_path / "validation.jsonl", ["[]", chat_row("q", "a")])

    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=train, validation=validation))

    message = str(info.value)
    assert f"{train}:2:" in message
    assert f"{validation}:1:" in message


def test_load_examples_reports_a_missing_validation_file(tmp_path, write_jsonl, chat_row) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row("q", "a")])
    missing = tmp_path / "nope.jsonl"

    with pytest.raises(DataError) as info:
        load_examples(DataConfig(train=train, validation=missing))

    assert str(missing) in str(info.value)


def test_load_examples_without_validation(tmp_path, write_jsonl, chat_row) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row("q", "a")])

    examples, validation = load_examples(DataConfig(train=train))

    assert len(examples) == 1
    assert validation is None
