"""Training files uploaded to `specialize serve` (`POST /v1/files`), for its fine-tuning jobs.

An upload is checked by the data stage before it is kept: every line is read as OpenAI chat JSONL
(`{"messages": [...]}`, a `label` next to them for classification), and a file with any bad line is refused with
all of its problems, each naming its line. Accepted files live in `<runs_dir>/files/<file-id>.jsonl`, written
to a hidden sibling and renamed, with a row in the registry's `files` table naming the API key that uploaded them:
another key neither sees nor reads them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from specialize.data.load import empty_file, raise_problems, read_examples
from specialize.errors import DataError, NotFoundError
from specialize.runs import Registry, now
from specialize.serve.api_keys import EVERY_KEY

PURPOSE = "fine-tune"  # the only purpose this server stores files for


@dataclass(frozen=True)
class UploadedFile:
    """A stored training file, as listed."""

    id: str
    key_id: str | None
    filename: str
    purpose: str
    bytes: int
    path: Path
    created_at: datetime


class UploadedFiles:
    """The `files` table of a registry and the folder holding the files."""

    def __init__(self, registry: Registry, directory: Path) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.engine = registry.engine
        self.directory = directory
        meta = sa.MetaData()
        self.table = sa.Table(
            "files",
            meta,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("key_id", sa.String(40), index=True),
            sa.Column("filename", sa.String(500), nullable=False),
            sa.Column("purpose", sa.String(40), nullable=False),
            sa.Column("bytes", sa.Integer, nullable=False),
            sa.Column("path", sa.String(1000), nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False, index=True),
        )
        meta.create_all(self.engine)

    def add(self, key_id: str | None, filename: str, purpose: str, content: bytes) -> UploadedFile:
        """Check `content` as chat JSONL (supervised) or preference JSONL (DPO), and keep it.

        Raises:
            DataError: the purpose is not `fine-tune`, or lines are invalid; `.problems` has one
                `line N: what; fix` entry per bad line.
        """
        if purpose != PURPOSE:
            raise DataError(
                f"purpose {purpose!r} is not supported: this server stores files for fine-tuning only; "
                f"send purpose='{PURPOSE}'"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        file_id = "file-" + secrets.token_hex(12)
        final = self.directory / f"{file_id}.jsonl"
        staging = self.directory / f".{file_id}.partial.jsonl"
        staging.write_bytes(content)
        try:
            loaded = read_examples(staging, format=row_format(content))
            problems = loaded.problems or ([] if loaded.examples else [empty_file(staging)])
            # The staging path means nothing to the uploader: problems name the line of their file instead.
            raise_problems([f"line {p.removeprefix(f'{staging}:')}" for p in problems], filename)
            os.replace(staging, final)
        finally:
            staging.unlink(missing_ok=True)
        record = UploadedFile(file_id, key_id, filename, purpose, len(content), final, now())
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(**{**record.__dict__, "path": str(final)}))
        return record

    def get(self, key_id: str | None, file_id: str) -> UploadedFile:
        """The file `file_id` of this key; another key's file is reported as missing, exactly like an unknown id."""
        with self.engine.connect() as conn:
            row = conn.execute(self._of(key_id).where(self.table.c.id == file_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"No such File object: {file_id}; GET /v1/files lists your files")
        return _file(row)

    def page(
        self, key_id: str | None, after: str | None, limit: int, newest_first: bool
    ) -> list[UploadedFile]:
        """Files of this key in upload order (or the reverse), starting after the file `after`."""
        created = self.table.c.created_at
        query = self._of(key_id).order_by(created.desc() if newest_first else created, self.table.c.id)
        if after is not None:
            mark = self.get(key_id, after).created_at
            query = query.where(created < mark if newest_first else created > mark)
        with self.engine.connect() as conn:
            return [_file(r) for r in conn.execute(query.limit(limit)).mappings().all()]

    def delete(self, key_id: str | None, file_id: str) -> None:
        stored = self.get(key_id, file_id)
        with self.engine.begin() as conn:
            conn.execute(self.table.delete().where(self.table.c.id == file_id))
        stored.path.unlink(missing_ok=True)

    def _of(self, key_id: str | None) -> Any:
        """The rows of key `key_id` (None: made without keys; `EVERY_KEY`: every key's, for an admin)."""
        owner = self.table.c.key_id
        if key_id == EVERY_KEY:
            return self.table.select()
        return self.table.select().where(owner.is_(None) if key_id is None else owner == key_id)


def _file(row: Any) -> UploadedFile:
    return UploadedFile(**{**row, "path": Path(row["path"])})


def row_format(content: bytes) -> str:
    """`preference` when the first row is an OpenAI preference pair, else `chat` (the rows then say what is wrong)."""
    for line in content.splitlines():
        if line.strip():
            try:
                first = json.loads(line)
            except ValueError:
                return "chat"
            return "preference" if isinstance(first, dict) and "preferred_output" in first else "chat"
    return "chat"
