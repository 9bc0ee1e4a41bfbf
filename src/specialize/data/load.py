"""Reading chat JSONL files with every problem reported by file and line.

Reads OpenAI chat JSONL (`{"messages": [...]}`) with an optional label field. Each line is checked on its own, and
all problems are collected before raising one `DataError`, so a user fixes a file in one pass instead of one error
per attempt. Blank lines are not rows and are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_LISTED = 20


@dataclass
class Example:
    """One conversation, where it came from, and its gold label when it is a classification example."""

    messages: list[dict[str, str]]
    source: str
    line: int
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": self.messages}
        if self.label is not None:
            row["label"] = self.label
        row.update(self.extra)
        row["source"] = f"{self.source}:{self.line}"
        return row


def read_chat_jsonl(path: Path, label_field: str = "label") -> list[Example]:
    """Read and validate a chat JSONL file.

    Args:
        path: the file.
        label_field: row key that holds a classification label, if any.

    Returns:
        The examples, in file order.

    Raises:
        DataError: listing every bad line as `file:line: problem; fix`.
    """
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check data.train / data.validation in the config")
    problems: list[str] = []
    examples: list[Example] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 (byte {exc.start}); re-save the file as UTF-8")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
                continue
            error, example = _check_row(row, path, number, label_field)
            if error:
                problems.append(f"{where}: {error}")
            elif example is not None:
                examples.append(example)
    labelled = sum(e.label is not None for e in examples)
    if 0 < labelled < len(examples) and not problems:
        missing = [e for e in examples if e.label is None]
        problems += [f"{path}:{e.line}: no '{label_field}' although other rows have one; add it" for e in missing]
    if problems:
        shown = problems[:MAX_LISTED]
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} invalid line(s) in {path}:\n" + "\n".join(shown) + more, problems)
    if not examples:
        raise DataError(f"{path} has no examples; it is empty or only blank lines")
    return examples


def _check_row(row: Any, path: Path, line: int, label_field: str) -> tuple[str | None, Example | None]:
    if not isinstance(row, dict):
        return f"expected a JSON object with 'messages', got {type(row).__name__}", None
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing 'messages' (a non-empty list of {role, content} objects)", None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] is not an object with role and content", None
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            return f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}", None
        if not isinstance(content, str) or not content.strip():
            return f"messages[{i}].content is empty or not a string; give the {role} text", None
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        return "a system message may only come first", None
    if not turns or turns[-1] != "assistant":
        return "the last message must be the assistant's answer to learn from", None
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return f"turn {i + 1} is {role!r} where {expected!r} was expected; user and assistant alternate", None
    label = row.get(label_field)
    if label is not None and not isinstance(label, str | int | bool):
        return f"'{label_field}' must be a string, got {type(label).__name__}", None
    extra = {k: v for k, v in row.items() if k not in ("messages", label_field, "source")}
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return None, Example(clean, str(path), line, None if label is None else str(label), extra)
