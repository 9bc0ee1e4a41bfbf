"""Reading data files into examples, with every problem reported by file and line.

Reads any file `rows.py` can parse, in any format of `formats.py` (auto-detected from the rows' keys unless
`data.format` names one), renames columns by `data.columns`, and checks labels against `data.labels`. Each row is
checked on its own and all problems are collected before one `DataError` is raised, so a user fixes a file in one
pass instead of one error per attempt. Blank lines are not rows and are skipped.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.data.formats import DESCRIBE, FORMATS, ROLES, RowError, detect_format, parse_row
from specialize.data.rows import RawRow, read_rows
from specialize.errors import DataError

__all__ = ["ROLES", "Example", "Loaded", "read_chat_jsonl", "read_data", "read_examples"]

MAX_LISTED = 20
# Keys a prepared row writes itself; a source column of the same name would be overwritten, so it is renamed.
RESERVED = ("messages", "label", "source", "prompt", "chosen", "rejected", "completion", "desirable", "text")


@dataclass
class Example:
    """One training example, where it came from, and its gold label when it is a classification example.

    A chat example has `messages`. A preference pair has `messages` = prompt + chosen answer (what supervised
    fine-tuning learns) and `rejected`, the other answer; the last `n_chosen` messages are the chosen answer. A
    rated answer (feedback, for KTO) has `messages` = prompt + answer, `n_chosen` answer messages and `desirable`,
    its rating. A plain-text example (continued pre-training) has `text` and no messages.
    """

    messages: list[dict[str, str]]
    source: str
    line: int
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    rejected: list[dict[str, str]] | None = None
    n_chosen: int = 0
    text: str | None = None
    group: str | None = None
    format: str = "chat"  # the source format it was read from (formats.FORMATS)
    desirable: bool | None = None  # a rated answer: good (True) or bad (False)

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.desirable is not None:
            return "feedback"
        return "preference" if self.rejected is not None else "chat"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The messages before the answer learnt from (before the chosen answer for a pair)."""
        return self.messages[: len(self.messages) - max(self.n_chosen, 1)] if self.messages else []

    def to_json(self) -> dict[str, Any]:
        """The row written to a prepared split; preference rows also carry TRL's prompt/chosen/rejected lists,
        rated answers prompt/completion lists and `desirable` (not `label`, which names a classification's)."""
        row: dict[str, Any] = {"text": self.text} if self.text is not None else {"messages": self.messages}
        if self.rejected is not None:
            row["prompt"] = self.prompt
            row["chosen"] = self.messages[len(self.prompt) :]
            row["rejected"] = self.rejected
        if self.desirable is not None:
            row["prompt"] = self.prompt
            row["completion"] = self.messages[len(self.prompt) :]
            row["desirable"] = self.desirable
        if self.label is not None:
            row["label"] = self.label
        row.update(self.extra)  # extra keys never clash: RESERVED names were renamed when the row was read
        row["source"] = self.where
        return row


@dataclass
class Loaded:
    """What one file holds: the valid examples, a problem for each invalid row, and the format it was read as."""

    path: Path
    examples: list[Example]
    problems: list[str]
    format: str | None
    file_type: str
    notes: list[str] = field(default_factory=list)


def read_examples(
    path: Path,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    label_field: str = "label",
    labels: list[str] | None = None,
    group_field: str | None = None,
) -> Loaded:
    """Read a data file into examples without raising for bad rows.

    Args:
        path: the file.
        format: a name from `formats.FORMATS`, or "auto" to detect it from the rows' keys (the majority wins;
            rows of another shape are then reported).
        columns: format key -> the file's column, applied to every row before anything else.
        label_field: row key that holds a classification label, if any.
        labels: the declared label set; another label is a problem.
        group_field: row key naming each row's group (document); required on every row when given.

    Returns:
        The valid examples in file order and one `file:line: problem; fix` string per invalid row.

    Raises:
        DataError: only when the file does not exist or is a folder.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check data.train / data.validation in the config")
    if path.is_dir():
        raise DataError(f"{path} is a folder; name a data file (JSONL, JSON, CSV, TSV, Parquet or text)")
    rows, problems, file_type = read_rows(path)
    mapped: list[tuple[RawRow, dict[str, Any]]] = []
    for raw in rows:
        try:
            mapped.append((raw, _map_columns(raw.value, columns or {})))
        except RowError as exc:
            problems.append(f"{path}:{raw.line}: {exc}")
    fmt, why = _choose_format(format, [row for _, row in mapped])
    if fmt is None:
        if mapped:
            keys = sorted(set().union(*(row.keys() for _, row in mapped)), key=str)[:12]
            problems.append(
                f"{path}:{mapped[0][0].line}: cannot tell the format: the rows have keys {keys}; rows "
                f"need {' or '.join(DESCRIBE.values())}. Map your columns with data.columns (e.g. "
                "columns: {prompt: question, completion: answer}) or set data.format"
            )
        return Loaded(path, [], _sorted(problems), None, file_type)
    examples, notes = [], []
    for raw, row in mapped:
        try:
            example, said = _example(fmt, row, path, raw.line, label_field, labels, group_field)
            examples.append(example)
            notes += [f"{path}:{raw.line}: {note}" for note in said]
        except RowError as exc:
            own = detect_format(row)
            hint = f" (the file reads as {fmt}{why}; this row looks like {own})" if own and own != fmt else ""
            problems.append(f"{path}:{raw.line}: {exc}{hint}")
    labelled = sum(e.label is not None for e in examples)
    if 0 < labelled < len(examples) and labels is None:
        problems += [
            f"{path}:{e.line}: no '{label_field}' although other rows have one; add it"
            for e in examples
            if e.label is None
        ]
        examples = [e for e in examples if e.label is not None]
    return Loaded(path, examples, _sorted(problems), fmt, file_type, notes)


def read_data(path: Path, **options: Any) -> list[Example]:
    """Read a data file (see `read_examples` for the options), raising one DataError that lists every bad row."""
    loaded = read_examples(path, **options)
    raise_problems(loaded.problems, path)
    if not loaded.examples:
        raise_problems([empty_file(path)], path)
    return loaded.examples


def read_chat_jsonl(path: Path, label_field: str = "label") -> list[Example]:
    """Read and validate a chat JSONL file (`{"messages": [...]}` per line).

    Args:
        path: the file.
        label_field: row key that holds a classification label, if any.

    Returns:
        The examples, in file order.

    Raises:
        DataError: listing every bad line as `file:line: problem; fix`.
    """
    return read_data(path, format="chat", label_field=label_field)


def empty_file(path: Path) -> str:
    return f"{path}:1: no examples; the file is empty or has only blank lines, add rows to it"


def raise_problems(problems: list[str], source: Path | str) -> None:
    """One DataError for all problems (the message shows the first MAX_LISTED; `.problems` keeps every one)."""
    if not problems:
        return
    shown = problems[:MAX_LISTED]
    more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DataError(f"{len(problems)} invalid line(s) in {source}:\n" + "\n".join(shown) + more, problems)


def _choose_format(requested: str, rows: list[dict[str, Any]]) -> tuple[str | None, str]:
    if requested != "auto":
        if requested not in FORMATS:
            raise DataError(f"unknown data.format {requested!r}; use auto or one of {', '.join(FORMATS)}")
        return requested, " (data.format)"
    votes = Counter(detect_format(row) for row in rows)
    votes.pop(None, None)
    if not votes:
        return None, ""
    fmt = max(votes, key=lambda f: (votes[f], -FORMATS.index(f)))
    return fmt, f", detected from {votes[fmt]} of {len(rows)} rows; set data.format to choose"


def _map_columns(value: Any, columns: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RowError(
            f"expected a JSON object (one example per row, e.g. with 'messages'), got {type(value).__name__}"
        )
    if not columns:
        return value
    row = dict(value)
    for canonical, column in columns.items():
        if column not in value:
            close = difflib.get_close_matches(column, [str(k) for k in value], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise RowError(
                f"no column '{column}' (named by data.columns.{canonical}); {hint}the row has columns "
                f"{sorted(map(str, value))[:12]}"
            )
        row.pop(column, None)
    for canonical, column in columns.items():
        row[canonical] = value[column]
    return row


def _example(
    fmt: str,
    row: dict[str, Any],
    path: Path,
    line: int,
    label_field: str,
    labels: list[str] | None,
    group_field: str | None,
) -> tuple[Example, list[str]]:
    parsed = parse_row(fmt, row)
    # A rated answer's `label` is its rating, not a class.
    label = None if parsed.desirable is not None else _label(row.get(label_field), label_field, labels)
    group = None
    if group_field is not None:
        value = row.get(group_field)
        if value is None or value == "" or isinstance(value, dict | list):
            raise RowError(
                f"no '{group_field}' (data.group_field names each row's group); give every row one"
            )
        group = str(value)
    extra = {
        (f"{k}_" if k in RESERVED else str(k)): _jsonable(v)
        for k, v in row.items()
        if k not in parsed.used and k != label_field and k != "source"
    }
    example = Example(
        parsed.messages,
        str(path),
        line,
        label,
        extra,
        parsed.rejected,
        parsed.n_chosen,
        parsed.text,
        group,
        fmt,
        parsed.desirable,
    )
    return example, parsed.notes


def _label(value: Any, label_field: str, labels: list[str] | None) -> str | None:
    if value is None or value == "":
        if labels is not None:
            raise RowError(f"no '{label_field}' although data.labels declares a label set; add the label")
        return None
    if not isinstance(value, str | int | bool):
        raise RowError(f"'{label_field}' must be a string, got {type(value).__name__}")
    label = str(value)
    if labels is not None and label not in labels:
        close = difflib.get_close_matches(label, labels, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RowError(
            f"label {label!r} is not in the declared set data.labels; {hint}fix the row or add the "
            "label to data.labels"
        )
    return label


def _jsonable(value: Any) -> Any:
    """Parquet cells can be dates, decimals or bytes; prepared rows are JSON, so those become strings."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _sorted(problems: list[str]) -> list[str]:
    """Problems in line order (reading and checking find them in two passes)."""

    def line_of(problem: str) -> int:
        head = problem.split(": ", 1)[0]
        number = head.rsplit(":", 1)[-1]
        return int(number) if number.isdigit() else 0

    return sorted(problems, key=line_of)
