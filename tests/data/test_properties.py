"""Property tests: whatever bytes, JSON or column mapping the loaders get, the only failure is a DataError whose
every problem names the file and a line, and the whole check runs to the end on whatever loaded."""

from __future__ import annotations

import json
import pathlib
import re
import string
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specialize.config import CanonicalColumn, DataConfig
from specialize.data import check_data, load_examples, read_data, read_examples
from specialize.errors import DataError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".dat", ".jsonl.gz"]
KEYS = [
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "response",
    "chosen",
    "rejected",
    "text",
    "system",
    "label",
    "role",
    "content",
    "from",
    "value",
    "context",
    "id",
]
CANONICAL = list(get_args(CanonicalColumn))
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**20) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "bot", ""]),
            "content": st.text(max_size=8) | st.integers(),
        }
    ),
    max_size=4,
)
rows = st.dictionaries(st.sampled_from(KEYS), json_values | messages | st.text(max_size=20), max_size=5)


def _assert_located(path: pathlib.Path, error: DataError) -> None:
    problems = error.problems or [str(error)]
    pattern = re.compile(re.escape(str(path)) + r":\d+: \S")
    assert all(pattern.match(p) for p in problems), problems
    assert str(path) in str(error)


def _read_everything(path: pathlib.Path, **options: Any) -> None:
    loaded = read_examples(path, **options)
    for problem in loaded.problems:
        assert re.match(re.escape(str(path)) + r":\d+: \S", problem), problem
    try:
        examples = read_data(path, **options)
    except DataError as error:
        _assert_located(path, error)
    else:
        assert examples and all(e.messages or e.text for e in examples)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("properties")


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_fail_only_with_located_data_errors(folder, data: bytes, suffix: str) -> None:
    path = folder / f"random{suffix}"
    path.write_bytes(data)

    _read_everything(path)


@SETTINGS
@given(lines=st.lists(json_values | rows, max_size=6), as_array=st.booleans())
def test_random_json_fails_only_with_located_data_errors(folder, lines: list[Any], as_array: bool) -> None:
    path = folder / ("rows.json" if as_array else "rows.jsonl")
    text = json.dumps(lines, indent=1) if as_array else "".join(json.dumps(v) + "\n" for v in lines)
    path.write_text(text, encoding="utf-8")

    _read_everything(path)


@SETTINGS
@given(
    lines=st.lists(rows, min_size=1, max_size=6),
    mapping=st.dictionaries(
        st.sampled_from(CANONICAL), st.sampled_from(KEYS) | st.text(max_size=6), max_size=3
    ),
    fmt=st.sampled_from(["auto", "chat", "sharegpt", "alpaca", "completion", "preference", "text"]),
    as_csv=st.booleans(),
)
def test_random_column_mappings_fail_only_with_located_data_errors(
    folder, lines, mapping, fmt, as_csv
) -> None:
    path = folder / ("mapped.csv" if as_csv else "mapped.jsonl")
    if as_csv:
        header = sorted({k for row in lines for k in row})
        cells = [",".join(json.dumps(row.get(k, "")).replace(",", ";") for k in header) for row in lines]
        path.write_text("\n".join([",".join(header) or "empty", *cells]) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in lines), encoding="utf-8")
    config = DataConfig(train=path, columns=mapping, format=fmt)

    try:
        examples, validation = load_examples(config)
    except DataError as error:
        _assert_located(path, error)
    else:
        assert examples and validation is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(rows | json_values, min_size=1, max_size=8))
def test_check_runs_to_the_end_on_whatever_loads(folder, lines: list[Any]) -> None:
    path = folder / "check.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in lines), encoding="utf-8")

    result = check_data(path)

    assert all(p.startswith(f"{path}:") for p in result.problems)
    assert set(result.audit) >= {"counts", "tokens", "pii", "duplicates", "warnings"}


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_files_name_the_file(tmp_path, text: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(DataError) as info:
        read_data(path)

    _assert_located(path, info.value)
    assert "no examples" in str(info.value)


def test_printable_garbage_in_every_format_is_located(tmp_path) -> None:
    garbage = "".join(string.printable[i % 90] for i in range(500))
    for suffix in SUFFIXES:
        path = tmp_path / f"g{suffix}"
        path.write_text(garbage, encoding="utf-8")
        _read_everything(path)
