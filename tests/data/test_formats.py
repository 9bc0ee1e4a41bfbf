"""Every supported format and file type reads to the same examples; every invalid row is named by file and line."""

from __future__ import annotations

import csv
import gzip
import json
import pathlib
from typing import Any

import pytest

from specialize.config import DataConfig
from specialize.data import encode_text, load_examples, read_data, read_examples
from specialize.data.load import Example
from specialize.errors import DataError

QA = [("What is the capital of France?", "Paris."), ("Two plus two?", "Four.")]
CHAT = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]


def _jsonl(path: pathlib.Path, rows: list[Any]) -> pathlib.Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _csv(path: pathlib.Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> pathlib.Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _problems(path: pathlib.Path, **options: Any) -> list[str]:
    with pytest.raises(DataError) as info:
        read_data(path, **options)
    return info.value.problems


@pytest.mark.parametrize(
    ("rows", "fmt"),
    [
        ([{"messages": m} for m in CHAT], "chat"),
        (
            [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA],
            "sharegpt",
        ),
        ([{"instruction": q, "input": "", "output": a} for q, a in QA], "alpaca"),
        ([{"instruction": q, "context": "", "response": a} for q, a in QA], "alpaca"),
        ([{"prompt": q, "completion": a} for q, a in QA], "completion"),
    ],
)
def test_every_chat_format_reads_to_the_same_conversations(tmp_path, rows, fmt: str) -> None:
    loaded = read_examples(_jsonl(tmp_path / "d.jsonl", rows))

    assert loaded.problems == []
    assert loaded.format == fmt
    assert [e.messages for e in loaded.examples] == CHAT
    assert all(e.format == fmt and e.kind == "chat" for e in loaded.examples)


def test_alpaca_input_follows_the_instruction_and_system_comes_first(tmp_path) -> None:
    row = {
        "instruction": "Translate to French.",
        "input": "Good morning",
        "output": "Bonjour",
        "system": "Be brief.",
    }

    (example,) = read_data(_jsonl(tmp_path / "d.jsonl", [row]))

    assert example.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]


def test_multi_turn_sharegpt_with_system_and_openai_content_parts(tmp_path) -> None:
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "a2"},
        ]
    }
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"}]},
            {"role": "assistant", "content": "ok"},
        ]
    }

    (conv,) = read_data(_jsonl(tmp_path / "s.jsonl", [sharegpt]))
    (chat,) = read_data(_jsonl(tmp_path / "c.jsonl", [parts]))

    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[0] == {"role": "user", "content": "look"}


def test_preference_pair_keeps_prompt_chosen_and_rejected(tmp_path) -> None:
    path = _jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": " Hello!", "rejected": " Go away.", "id": 1}]
    )

    (pair,) = read_data(path)
    row = pair.to_json()

    assert pair.kind == "preference" and pair.format == "preference"
    assert pair.messages == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    assert row["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Go away."}]
    assert row["messages"] == row["prompt"] + row["chosen"]  # what supervised fine-tuning learns
    assert row["id"] == 1 and row["source"] == f"{path}:1"


def test_hh_transcripts_are_split_into_turns_and_repeated_speakers_joined(tmp_path) -> None:
    prompt = (
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: How can I help?\n\nHuman: A joke?\n\nAssistant:"
    )
    path = _jsonl(tmp_path / "hh.jsonl", [{"prompt": prompt, "chosen": " Sure: ...", "rejected": " No."}])

    loaded = read_examples(path)

    (pair,) = loaded.examples
    assert pair.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.\n\nHow can I help?"},
        {"role": "user", "content": "A joke?"},
    ]
    assert pair.rejected == [{"role": "assistant", "content": "No."}]
    assert len(loaded.notes) == 1 and loaded.notes[0].startswith(f"{path}:1:")


def test_preference_as_messages_and_with_an_implicit_prompt(tmp_path) -> None:
    user = {"role": "user", "content": "q"}
    good, bad = {"role": "assistant", "content": "good"}, {"role": "assistant", "content": "bad"}
    rows = [
        {"prompt": [user], "chosen": [good], "rejected": [bad]},
        {"chosen": [user, good], "rejected": [user, bad]},
    ]

    explicit, implicit = read_data(_jsonl(tmp_path / "p.jsonl", rows))

    assert explicit.messages == implicit.messages == [user, good]
    assert explicit.rejected == implicit.rejected == [bad]


def test_plain_text_files_are_paragraphs_for_continued_pretraining(tmp_path, tiny_tokenizer) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("First paragraph,\nstill first.\n\n\nSecond one.\n", encoding="utf-8")

    first, second = read_data(path)
    encoded = encode_text(tiny_tokenizer, first.text or "")

    assert (first.text, first.line, second.text, second.line) == (
        "First paragraph,\nstill first.",
        1,
        "Second one.",
        5,
    )
    assert first.kind == "text" and first.messages == []
    assert first.to_json() == {"text": "First paragraph,\nstill first.", "source": f"{path}:1"}
    assert encoded.input_ids[-1] == tiny_tokenizer.eos_token_id and encoded.labels == encoded.input_ids


def test_csv_and_tsv_with_a_column_mapping(tmp_path) -> None:
    csv_path = _csv(tmp_path / "d.csv", ["question", "answer", "topic"], [[q, a, "geo"] for q, a in QA])
    tsv_path = _csv(tmp_path / "d.tsv", ["question", "answer"], [list(pair) for pair in QA], delimiter="\t")
    columns = {"prompt": "question", "completion": "answer"}

    from_csv = read_data(csv_path, columns=columns)
    from_tsv = read_data(tsv_path, columns=columns)

    assert [e.messages for e in from_csv] == [e.messages for e in from_tsv] == CHAT
    assert [e.line for e in from_csv] == [2, 3]
    assert from_csv[0].extra == {"topic": "geo"}


def test_csv_without_a_mapping_says_how_to_map_the_columns(tmp_path) -> None:
    path = _csv(tmp_path / "d.csv", ["question", "answer"], [list(pair) for pair in QA])

    (problem,) = _problems(path)

    assert problem.startswith(f"{path}:2:")
    assert "data.columns" in problem and "question" in problem


def test_a_missing_mapped_column_is_named_with_a_suggestion(tmp_path) -> None:
    path = _csv(tmp_path / "d.csv", ["question", "answer"], [list(pair) for pair in QA])

    problems = _problems(path, columns={"prompt": "questions", "completion": "answer"})

    assert len(problems) == 2
    assert all("'questions'" in p and "data.columns.prompt" in p and "'question'" in p for p in problems)


def test_csv_cells_may_hold_json_conversations_and_multiline_quotes_keep_line_numbers(tmp_path) -> None:
    path = _csv(
        tmp_path / "d.csv",
        ["messages", "note"],
        [[json.dumps(CHAT[0]), "two\nlines"], [json.dumps(CHAT[1]), "x"]],
    )

    examples = read_data(path)

    assert [e.messages for e in examples] == CHAT
    assert [e.line for e in examples] == [2, 4]


def test_json_array_rows_keep_the_line_they_start_on(tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps([{"messages": m} for m in CHAT] + [{"messages": []}], indent=2), encoding="utf-8"
    )

    (problem,) = _problems(path)
    loaded = read_examples(path)

    assert [e.line for e in loaded.examples] == [2, 14]
    assert problem.startswith(f"{path}:26:")


def test_parquet_rows_are_numbered(tmp_path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"instruction": [q for q, _ in QA] + [""], "output": [a for _, a in QA] + ["x"]}), path
    )

    (problem,) = _problems(path)
    loaded = read_examples(path)

    assert [e.messages for e in loaded.examples] == CHAT
    assert problem.startswith(f"{path}:3:") and "'instruction' is empty" in problem


def test_gzip_compressed_jsonl(tmp_path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({"messages": m}) + "\n" for m in CHAT).encode()))

    assert [e.messages for e in read_data(path)] == CHAT


def test_the_majority_format_wins_and_odd_rows_are_explained(tmp_path) -> None:
    rows = [{"prompt": q, "completion": a} for q, a in QA * 2] + [{"text": "stray"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)

    (problem,) = _problems(path)

    assert problem.startswith(f"{path}:5:")
    assert "reads as completion" in problem and "looks like text" in problem


def test_an_explicit_format_overrides_detection(tmp_path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "hello", "prompt": "p", "completion": "c"}])

    (auto,) = read_data(path)
    (forced,) = read_data(path, format="text")

    assert auto.kind == "chat" and forced.kind == "text"


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "empty"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}, "tool"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "turn 1",
        ),
        ({"conversations": [{"from": "robot", "value": "q"}]}, "'robot'"),
        ({"instruction": "q", "output": 5.5, "x": [1]}, None),
        ({"instruction": "q", "output": ["a"]}, "'output' must be text"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "same answer"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "'chosen' is empty"),
        ({"chosen": "plain", "rejected": "text"}, "no 'prompt'"),
        ({"text": "   "}, "'text' is empty"),
    ],
)
def test_invalid_rows_are_explained(tmp_path, row: dict[str, Any], words: str | None) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [row])
    if words is None:  # a number where text is expected is read as its text
        assert read_data(path)[0].messages[1]["content"] == "5.5"
        return

    (problem,) = _problems(path)

    assert problem.startswith(f"{path}:1:")
    assert words in problem


def test_declared_labels_catch_typos_with_a_suggestion(tmp_path) -> None:
    rows = [{"messages": m, "label": label} for m, label in zip(CHAT, ["positive", "postive"], strict=True)]
    path = _jsonl(tmp_path / "d.jsonl", rows + [{"messages": CHAT[0]}])

    problems = _problems(path, labels=["positive", "negative"])

    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:2", f"{path}:3"]
    assert "'postive'" in problems[0] and "did you mean 'positive'" in problems[0]
    assert "data.labels" in problems[1]


def test_group_field_is_required_on_every_row(tmp_path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"messages": CHAT[0], "doc": "a"}, {"messages": CHAT[1]}])

    (problem,) = _problems(path, group_field="doc")
    loaded = read_examples(path, group_field="doc")

    assert problem.startswith(f"{path}:2:") and "'doc'" in problem
    assert loaded.examples[0].group == "a"


def test_encoding_problems_are_reported_per_line_and_a_bom_is_accepted(tmp_path) -> None:
    good = json.dumps({"messages": CHAT[0]}).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"messages": "caf\xe9"}\n' + good + b"\n")
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes((json.dumps({"messages": CHAT[1]}) + "\n").encode("utf-16"))

    (problem,) = _problems(path)

    assert problem.startswith(f"{path}:2:") and "UTF-8" in problem
    assert [e.messages for e in read_data(utf16)] == [CHAT[1]]


def test_csv_structure_problems(tmp_path) -> None:
    ragged = tmp_path / "r.csv"
    ragged.write_text("prompt,completion\nq,a\nq,a,extra\n", encoding="utf-8")
    duplicated = tmp_path / "h.csv"
    duplicated.write_text("prompt,prompt\nq,a\n", encoding="utf-8")

    (too_many,) = _problems(ragged)
    (header,) = _problems(duplicated)

    assert too_many.startswith(f"{ragged}:3:") and "3 values" in too_many
    assert header.startswith(f"{duplicated}:1:") and "header" in header


def test_unknown_file_type_and_missing_file(tmp_path) -> None:
    odd = tmp_path / "d.xlsx"
    odd.write_bytes(b"PK\x03\x04 not a sheet")

    (problem,) = _problems(odd)
    with pytest.raises(DataError, match="does not exist"):
        read_data(tmp_path / "missing.jsonl")

    assert problem.startswith(f"{odd}:1:") and ".jsonl" in problem


def test_load_examples_uses_the_config_columns_and_format(tmp_path) -> None:
    train = _csv(tmp_path / "t.csv", ["q", "a", "y"], [[q, a, "x"] for q, a in QA])
    config = DataConfig(train=train, columns={"instruction": "q", "output": "a"}, label_field="y")

    examples, validation = load_examples(config)

    assert validation is None
    assert [e.messages for e in examples] == CHAT and {e.label for e in examples} == {"x"}


def test_example_prompt_is_everything_before_the_answer() -> None:
    example = Example(CHAT[0], "f", 1)

    assert example.prompt == CHAT[0][:1]


def test_a_json_file_may_hold_one_pretty_printed_object_or_jsonl(tmp_path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"messages": CHAT[0]}, indent=2), encoding="utf-8")
    lines = _jsonl(tmp_path / "lines.json", [{"messages": m} for m in CHAT])

    assert [e.messages for e in read_data(single)] == [CHAT[0]]
    assert [e.line for e in read_data(lines)] == [1, 2]


def test_openai_preference_rows_are_pairs(tmp_path):
    row = {
        "input": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello! How can I help?"}],
        "non_preferred_output": [{"role": "assistant", "content": "What."}],
    }
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "input": "Hi"}) + "\n", encoding="utf-8")
    loaded = read_examples(path)
    [pair] = loaded.examples
    assert pair.kind == "preference" and pair.prompt[0]["content"] == "Be kind."
    assert pair.messages[-1]["content"] == "Hello! How can I help?" and pair.rejected[0]["content"] == "What."
    [problem] = loaded.problems
    assert ":2:" in problem and "'input' must be an object with a 'messages' list" in problem


def test_rated_answers_are_feedback_rows_for_kto(tmp_path):
    path = _jsonl(
        tmp_path / "feedback.jsonl",
        [
            {"prompt": "What is 2 + 2?", "completion": "4", "label": True},
            {"messages": [{"role": "user", "content": "Hi"}], "completion": "Go away.", "label": False},
            {"prompt": "Hi", "completion": "Hello!", "label": "maybe"},
        ],
    )
    loaded = read_examples(path)
    assert loaded.format == "feedback"
    good, bad = loaded.examples
    assert (good.kind, good.desirable, good.label) == ("feedback", True, None)
    assert bad.to_json() == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Go away."}],
        "desirable": False,  # not `label`, which names a classification's gold answer in prepared rows
        "source": f"{path}:2",
    }
    assert loaded.problems == [
        f"{path}:3: 'label' of a rated answer must be true (a good answer) or false (a bad one), got 'maybe' "
        "(the file reads as feedback, detected from 2 of 3 rows; set data.format to choose; this row looks like "
        "completion)"
    ]
    # A CSV cell says the rating as text; the format is named, since a text label could be a class.
    table = _csv(tmp_path / "feedback.csv", ["prompt", "completion", "label"], [["Hi", "Hello!", "true"]])
    [row] = read_data(table, format="feedback")
    assert row.desirable is True
