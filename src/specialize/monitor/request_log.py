"""Every request `specialize serve` answers, and the feedback users give on the answers, in the registry.

The server writes these rows; they are what monitoring reads (drift of inputs, latency, error rates) and what
re-fine-tuning learns from (answers rated down, corrected answers). How much of the text a row keeps (none, a
copy with personal data masked, all of it) is the log's `content` mode, `specialize serve --log-content`
(`content.py`); it applies to corrections and comments of feedback too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from specialize.errors import NotFoundError
from specialize.monitor.content import ContentPolicy, LogContent
from specialize.runs import Registry, now

# The most characters of a request body (as JSON) and of an answer a row keeps. Monitoring and re-fine-tuning need
# what was asked and answered, not the megabytes a client may send: longer ones keep their head and their size.
MAX_STORED_CHARS = 64 * 1024


@dataclass
class ServedRequest:
    """One request as it is logged: filled in while it is answered."""

    id: str
    endpoint: str
    key_id: str | None = None
    model: str | None = None
    status_code: int = 200
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    request: dict[str, Any] | None = None
    response: str | None = None
    # the run whose adapter answered: a `NAME@alias` request names it only by its alias
    run_id: str | None = None


class RequestLog:
    """The `served_requests` and `feedback` tables of a registry."""

    def __init__(self, registry: Registry, content: LogContent = "redacted") -> None:
        import sqlalchemy as sa

        self.content = ContentPolicy(content)
        self._sa = sa
        self.engine = registry.engine
        meta = sa.MetaData()
        self.requests = sa.Table(
            "served_requests",
            meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("endpoint", sa.String(100), nullable=False),
            sa.Column("key_id", sa.String(40), index=True),
            sa.Column("model", sa.String(300), index=True),
            sa.Column("status_code", sa.Integer, nullable=False),
            sa.Column("error_code", sa.String(100)),
            sa.Column("prompt_tokens", sa.Integer, nullable=False),
            sa.Column("completion_tokens", sa.Integer, nullable=False),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("request", sa.Text),
            sa.Column("response", sa.Text),
            sa.Column("run_id", sa.String(200)),
            sa.Column("created_at", sa.DateTime, nullable=False, index=True),
        )
        self.feedback = sa.Table(
            "feedback",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.String(64), sa.ForeignKey("served_requests.id"), nullable=False),
            sa.Column("key_id", sa.String(40)),
            sa.Column("rating", sa.Float),
            sa.Column("correction", sa.Text),
            sa.Column("comment", sa.Text),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
        meta.create_all(self.engine)
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("served_requests")}
        if "run_id" not in columns:  # a registry written before the column existed
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE served_requests ADD COLUMN run_id VARCHAR(200)"))

    def record(self, req: ServedRequest) -> None:
        """Write one row; a body or answer over `MAX_STORED_CHARS` is kept as its head and its length, and text
        that is no valid Unicode is kept with U+FFFD in place of what cannot be stored."""
        # Field by field, not `asdict`, which would deep-copy the request body for nothing.
        values = {f.name: getattr(req, f.name) for f in fields(req)}
        values = {k: _text(v) if isinstance(v, str) else v for k, v in values.items()}
        request, response = self.content.body(req.request), self.content.answer(req.response)
        values["response"] = None if response is None else _text(response)
        if request is not None:
            body = json.dumps(request, ensure_ascii=False)
            if len(body) > MAX_STORED_CHARS:
                body = json.dumps(
                    {"truncated": True, "chars": len(body), "head": body[:MAX_STORED_CHARS]},
                    ensure_ascii=False,
                )
            values["request"] = _text(body)
        if response is not None and len(response) > MAX_STORED_CHARS:
            values["response"] = _text(response[:MAX_STORED_CHARS])
        with self.engine.begin() as conn:
            conn.execute(self.requests.insert().values(**values, created_at=now()))

    def add_feedback(
        self,
        request_id: str,
        key_id: str | None,
        rating: float | None,
        correction: str | None,
        comment: str | None,
    ) -> int:
        """Attach feedback to a logged request; only the key that made the request may rate it."""
        with self.engine.begin() as conn:
            row = conn.execute(self.requests.select().where(self.requests.c.id == request_id)).first()
            if row is None or (row.key_id is not None and row.key_id != key_id):
                raise NotFoundError(
                    f"no request {request_id!r}; give the `id` of a response from this server"
                )
            done = conn.execute(
                self.feedback.insert().values(
                    request_id=request_id,
                    key_id=key_id,
                    rating=rating,
                    correction=self.content.text(correction),
                    comment=self.content.text(comment),
                    created_at=now(),
                )
            )
        key = done.inserted_primary_key
        assert key is not None
        return int(key[0])

    def requests_for(self, model: str | None = None) -> list[dict[str, Any]]:
        query = self.requests.select().order_by(self.requests.c.created_at)
        if model is not None:
            query = query.where(self.requests.c.model == model)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def feedback_for(self, request_id: str) -> list[dict[str, Any]]:
        query = self.feedback.select().where(self.feedback.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]


def _text(value: str) -> str:
    """`value` as a database can store it: lone surrogates (which no UTF-8 encoder takes) replaced."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
