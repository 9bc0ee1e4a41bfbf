"""Served traffic as monitoring and re-fine-tuning read it: logged requests, the run that answered each, and the
feedback given on them.

Reads the registry's request log (`request_log.py`) and alias history (`runs.Registry`); writes nothing.

A request addressed as `NAME@alias` was answered by the run the alias named when the request was looked up, which
the server logs (`run_id`): a request in flight during a move counts for the run that answered it, the old one.
Rows logged before that column existed are placed on the alias history by their start (logged time minus
latency), which can misplace a request that was in flight at a move.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from specialize.monitor.request_log import RequestLog
from specialize.runs import Registry

GENERATION_ENDPOINTS = ("chat.completions", "completions")


@dataclass(frozen=True)
class Feedback:
    """One piece of feedback on a logged answer."""

    rating: float | None
    correction: str | None
    created_at: datetime


@dataclass(frozen=True)
class Exchange:
    """One logged generation request: what was asked and answered (when the log kept text), and by which run."""

    id: str
    model: str
    run_id: str | None  # the run whose weights answered; None for the base model or an unknown id
    started_at: datetime
    status_code: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    messages: list[dict[str, str]] | None  # the conversation asked (a completion's prompt as one user turn)
    answers: list[str] | None
    feedback: list[Feedback] = field(default_factory=list)

    @property
    def prompt_text(self) -> str | None:
        """What the user wrote: the user turns, joined (system prompts and earlier answers are not the input)."""
        if self.messages is None:
            return None
        return "\n".join(m["content"] for m in self.messages if m.get("role") == "user")

    @property
    def answer(self) -> str | None:
        return self.answers[0] if self.answers else None


class AliasTimeline:
    """Which run each `NAME@alias` named at any moment, from the registry's alias history."""

    def __init__(self, registry: Registry) -> None:
        self._moves: dict[tuple[str, str], tuple[list[datetime], list[str]]] = {}
        for move in registry.alias_history_of():
            times, runs = self._moves.setdefault((move["name"], move["alias"]), ([], []))
            times.append(move["created_at"])
            runs.append(move["run_id"])
        self._runs = {r["id"]: r["name"] for r in registry.list_runs()}

    def run_at(self, model: str, when: datetime) -> str | None:
        """The run that answered `model` at `when`: the alias's target then, or the run named directly."""
        name, at, alias = model.partition("@")
        if not at:
            return model if model in self._runs else None
        times, runs = self._moves.get((name, alias), ([], []))
        i = bisect.bisect_right(times, when)
        return runs[i - 1] if i else None

    def name_of(self, run_id: str) -> str | None:
        return self._runs.get(run_id)


def read_exchanges(
    registry: Registry,
    models: set[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    name: str | None = None,
    with_feedback: bool = False,
) -> list[Exchange]:
    """Generation requests logged in [since, until), oldest first, with their feedback and answering run.

    Args:
        registry: the registry holding the request log.
        models: keep requests addressed with one of these model ids (None: every model).
        since: start of the window (by the request's start), None for the whole log.
        until: end of the window, None for now.
        name: also keep requests answered by any run of this run name, however addressed (a run id, or any
            `NAME@alias`): the lineage re-fine-tuning learns from.
        with_feedback: only requests that received feedback.
    """
    import sqlalchemy as sa

    log = RequestLog(registry)
    timeline = AliasTimeline(registry)
    r, f = log.requests.c, log.feedback.c
    query = log.requests.select().where(r.endpoint.in_(GENERATION_ENDPOINTS)).order_by(r.created_at)
    if since is not None:
        query = query.where(r.created_at >= since)  # ended after the window began; started is checked below
    if until is not None:  # a request logged up to an hour after `until` may still have started before it
        query = query.where(r.created_at < until + timedelta(hours=1))
    if with_feedback:
        query = query.where(r.id.in_(sa.select(f.request_id)))
    with log.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        ids = [row["id"] for row in rows]
        feedback: dict[str, list[Feedback]] = defaultdict(list)
        for chunk in range(0, len(ids), 500):
            found = conn.execute(
                log.feedback.select().where(f.request_id.in_(ids[chunk : chunk + 500])).order_by(f.id)
            )
            for fb in found.mappings():
                feedback[fb["request_id"]].append(Feedback(fb["rating"], fb["correction"], fb["created_at"]))
    out = []
    for row in rows:
        model = row["model"] or ""
        started = row["created_at"] - timedelta(milliseconds=row["latency_ms"])
        if (since is not None and started < since) or (until is not None and started >= until):
            continue
        run_id = row["run_id"] or timeline.run_at(model, started)
        wanted = models is None or model in models
        if name is not None and run_id is not None and timeline.name_of(run_id) == name:
            wanted = True
        if not wanted:
            continue
        messages, answers = _content(row)
        out.append(
            Exchange(
                row["id"],
                model,
                run_id,
                started,
                row["status_code"],
                row["latency_ms"],
                row["prompt_tokens"],
                row["completion_tokens"],
                messages,
                answers,
                feedback.get(row["id"], []),
            )
        )
    return out


def _content(row: Any) -> tuple[list[dict[str, str]] | None, list[str] | None]:
    """The conversation and answers of a logged row, None where the log kept none (`--log-content none`, a
    truncated body, a refused request)."""
    messages = None
    try:
        body = json.loads(row["request"]) if row["request"] else None
    except json.JSONDecodeError:
        body = None
    if isinstance(body, dict) and not body.get("truncated"):
        if isinstance(body.get("messages"), list):
            messages = [_message(m) for m in body["messages"] if isinstance(m, dict)]
        elif isinstance(body.get("prompt"), str):
            messages = [{"role": "user", "content": body["prompt"]}]
        elif isinstance(body.get("prompt"), list) and body["prompt"]:
            messages = [{"role": "user", "content": str(body["prompt"][0])}]
    answers = None
    if row["status_code"] == 200 and row["response"]:
        try:
            decoded = json.loads(row["response"])
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, list) and all(isinstance(a, str) for a in decoded):
            answers = decoded
    return messages, answers


def _message(m: dict[str, Any]) -> dict[str, str]:
    """A logged message as a prepared row holds it: role and plain text (OpenAI's content parts joined)."""
    content = m.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    role = "system" if m.get("role") == "developer" else str(m.get("role", "user"))
    return {"role": role, "content": str(content or "")}


def judge(feedback: list[Feedback], stars: bool, answer: str | None) -> bool | None:
    """Whether feedback says an answer was bad (True), good (False), or says neither (None).

    A correction that differs from the answer says it was bad, whatever the rating; one equal to the answer says
    it was good. Ratings are read on the scale
    in use: 1-5 stars (`stars`: 1-2 bad, 3 neither, 4-5 good) or -1/1 thumbs (below 0 bad, above good).
    """
    verdict = None
    for fb in feedback:
        if fb.correction and (answer is None or fb.correction.strip() != answer.strip()):
            return True
        if fb.correction:  # "corrected" to the answer itself: confirmed
            verdict = False
        if fb.rating is not None:
            if stars:
                verdict = True if fb.rating <= 2 else False if fb.rating >= 4 else verdict
            else:
                verdict = True if fb.rating < 0 else False if fb.rating > 0 else verdict
    return verdict


def uses_stars(exchanges: list[Exchange]) -> bool:
    """Whether the ratings are 1-5 stars rather than -1/1 thumbs: any rating above 1 says so."""
    return any(fb.rating is not None and fb.rating > 1 for e in exchanges for fb in e.feedback)
