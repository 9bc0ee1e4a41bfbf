"""Reading a data file into raw rows, each with the line it starts on.

Reads JSONL, JSON (an array of objects, or JSONL saved as .json), CSV/TSV with a header, Parquet and plain text
(paragraphs separated by blank lines), optionally gzip-compressed (`.jsonl.gz`). The file type comes from the
suffix, or from the first character when the suffix says nothing. Nothing here knows what a row means
(formats.py does): this module only turns bytes into objects and says, for every line it cannot read, where and
why. Parquet rows have no lines; their row number (from 1) stands in for the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".md": "text",
    ".text": "text",
}


@dataclass(frozen=True)
class RawRow:
    """One parsed row (a dict for every type but text, whose rows are `{"text": paragraph}`) and its line."""

    line: int
    value: Any
    end_line: int = 0  # last line of a row that spans several (CSV quotes, pretty-printed JSON); 0: same line

    def spans(self, lines: set[int]) -> bool:
        return bool(lines) and any(n in lines for n in range(self.line, max(self.line, self.end_line) + 1))


def read_rows(path: Path) -> tuple[list[RawRow], list[str], str]:
    """Parse a data file into rows, never raising for bad content.

    Args:
        path: the file; it must exist.

    Returns:
        The rows that could be parsed, one problem per unreadable line (`file:line: what; fix`), and the file type.
    """
    name = path.name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name.removesuffix(".gz")).suffix
    try:
        data = path.read_bytes()
        if compressed:
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        return (
            [],
            [f"{path}:1: cannot read the file ({exc}); check that it is a complete, readable file"],
            "?",
        )
    kind = FILE_TYPES.get(suffix) or _sniff(data)
    if kind == "parquet":
        return _parquet(path, data)
    if kind is None:
        return (
            [],
            [
                f"{path}:1: unknown file type '{suffix or path.name}'; use .jsonl, .json, .csv, .tsv, .parquet "
                "or .txt (or set the suffix that matches the content)"
            ],
            "?",
        )
    text, problems, bad_lines = _decode(path, data)
    if kind == "jsonl":
        rows, more = _jsonl(path, text)
    elif kind == "json":
        rows, more = _json(path, text)
    elif kind in ("csv", "tsv"):
        rows, more = _csv(path, text, "\t" if kind == "tsv" else ",")
    else:
        rows, more = _text(text), []
    # A row touching an undecodable line is reported once, as not UTF-8, and not read half-replaced.
    return [r for r in rows if not r.spans(bad_lines)], problems + more, kind


def _sniff(data: bytes) -> str | None:
    head = data.lstrip()[:1]
    if data[:4] == b"PAR1":
        return "parquet"
    return {b"{": "jsonl", b"[": "json"}.get(head)


def _decode(path: Path, data: bytes) -> tuple[str, list[str], set[int]]:
    """UTF-8 text (a byte-order mark is dropped), one problem per line that is not UTF-8, and those lines."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        # A BOM says UTF-16 unambiguously (Excel's "Unicode text"); reading it beats refusing it.
        try:
            return data.decode("utf-16"), [], set()
        except UnicodeDecodeError:
            return (
                "",
                [f"{path}:1: starts like UTF-16 but is not valid UTF-16; re-save the file as UTF-8"],
                set(),
            )
    try:
        return data.decode("utf-8-sig"), [], set()
    except UnicodeDecodeError:
        pass
    problems = []
    bad = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                f"{path}:{number}: not UTF-8 (byte {exc.start} of the line is {raw[exc.start]:#04x}); "
                "re-save the file as UTF-8"
            )
            bad.add(number)
    return data.decode("utf-8-sig", errors="replace"), problems, bad


def _lines(text: str) -> list[str]:
    # Only \n ends a row: str.splitlines would also split on U+2028 and friends inside JSON strings.
    return text.split("\n")


def _jsonl(path: Path, text: str) -> tuple[list[RawRow], list[str]]:
    rows, problems = [], []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rows.append(RawRow(number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(
                f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno}); fix or remove the line"
            )
        except RecursionError:
            problems.append(f"{path}:{number}: JSON nested too deeply to read; flatten the row")
    return rows, problems


def _json(path: Path, text: str) -> tuple[list[RawRow], list[str]]:
    """A top-level array gives one row per element, each at the line it starts on; a single (pretty-printed)
    object is one row; anything else is read as JSONL (JSONL saved with a .json suffix is common)."""
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] != "[":
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return _jsonl(path, text)
        first = 1 + text.count("\n", 0, start)
        return [RawRow(first, value, first + text.strip().count("\n"))], []
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    pos = start + 1
    line = 1 + text.count("\n", 0, pos)
    expect_value = True
    while True:
        pos, line = _skip_space(text, pos, line)
        if pos >= len(text):
            return rows, [f"{path}:{line}: the JSON array is not closed with ']'; the file may be cut short"]
        char = text[pos]
        if char == "]" and (not expect_value or not rows):
            pos, line = _skip_space(text, pos + 1, line)
            if pos < len(text):
                return rows, [f"{path}:{line}: text after the end of the JSON array; remove it"]
            return rows, []
        if not expect_value:
            if char != ",":
                return rows, [f"{path}:{line}: expected ',' or ']' between array elements; fix the JSON"]
            pos, expect_value = pos + 1, True
            continue
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return rows, [
                f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); fix the element "
                "(elements after it cannot be read until then)"
            ]
        except RecursionError:
            return rows, [f"{path}:{line}: JSON nested too deeply to read; flatten the element"]
        end_line = line + text.count("\n", pos, end)
        rows.append(RawRow(line, value, end_line))
        line = end_line
        pos, expect_value = end, False


def _skip_space(text: str, pos: int, line: int) -> tuple[int, int]:
    while pos < len(text) and text[pos] in " \t\r\n":
        line += text[pos] == "\n"
        pos += 1
    return pos, line


def _csv(path: Path, text: str, delimiter: str) -> tuple[list[RawRow], list[str]]:
    # Long documents in one cell are normal for training data; the csv module's default cap is 128 KiB.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[RawRow] = []
    problems: list[str] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [h.strip() for h in record]
                duplicated = sorted({h for h in header if header.count(h) > 1})
                if duplicated or not all(header):
                    return [], [
                        f"{path}:{line}: the header needs distinct, non-empty column names (got {header}); "
                        "name every column once"
                    ]
                continue
            if len(record) != len(header):
                problems.append(
                    f"{path}:{line}: {len(record)} values where the header has {len(header)} columns; "
                    "quote values that contain the delimiter"
                )
                continue
            rows.append(RawRow(line, dict(zip(header, record, strict=True)), reader.line_num))
    except csv.Error as exc:
        problems.append(
            f"{path}:{start}: unreadable CSV ({exc}); fix the quoting (rows after it cannot be read)"
        )
    if header is None and not problems:
        problems.append(f"{path}:1: no header row; the first line must name the columns")
    return rows, problems


def _text(text: str) -> list[RawRow]:
    """Blank-line-separated paragraphs: the usual unit of a corpus for continued pre-training."""
    rows: list[RawRow] = []
    block: list[str] = []
    first = 0
    for number, line in enumerate(_lines(text) + [""], start=1):
        if line.strip():
            if not block:
                first = number
            block.append(line.rstrip("\r"))
        elif block:
            rows.append(RawRow(first, {"text": "\n".join(block)}, number - 1))
            block = []
    return rows


def _parquet(path: Path, data: bytes) -> tuple[list[RawRow], list[str], str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return (
            [],
            [
                f"{path}:1: reading Parquet needs pyarrow; pip install 'specialize[parquet]' or save the data "
                "as JSONL or CSV"
            ],
            "parquet",
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        return (
            [],
            [f"{path}:1: not a readable Parquet file ({type(exc).__name__}: {exc}); re-export it"],
            "parquet",
        )
    return [RawRow(i, row) for i, row in enumerate(table.to_pylist(), start=1)], [], "parquet"
