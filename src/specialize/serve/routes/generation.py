"""What `/v1/chat/completions` and `/v1/completions` share: token budgets, submitting prompts to the engine, and
answering with the engine's events, whole or streamed as server-sent events.

Each endpoint brings its own shapes (`Shapes`): how a finished answer and a streamed piece look in its response.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from specialize.models.engine import Delta, Done, Engine, Event
from specialize.models.engine import Request as EngineRequest
from specialize.models.generation import Sampling
from specialize.monitor.request_log import ServedRequest
from specialize.serve.gate import ApiError, GatedStream, Limits, gate_of
from specialize.serve.served_models import ServedModel
from specialize.serve.state import server_of


@dataclass(frozen=True)
class Shapes:
    """How one endpoint shapes its answers: object names (whole, streamed), a finished choice, a streamed piece
    (`chunk(index, text, finish_reason, first)`; an empty dict sends nothing)."""

    kinds: tuple[str, str]
    choice: Callable[[Done, int], dict[str, Any]]
    chunk: Callable[[int, str | None, str | None, bool], dict[str, Any]]


def budget(engine: Engine, limits: Limits, prompt_tokens: int, asked: int | None) -> int:
    """max_tokens for a prompt: as asked, else the most the context and the server allow."""
    room = engine.context_length - prompt_tokens
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens is too large: {asked}. This server answers at most {limits.max_tokens} tokens per "
            "completion.",
            "max_tokens_too_large",
            "max_tokens",
        )
    if room < 1 or (asked is not None and asked > room):
        raise ApiError(
            400,
            f"This model's maximum context length is {engine.context_length} tokens. However, you requested "
            f"{prompt_tokens + (asked or 1)} tokens ({prompt_tokens} in the prompt, {asked or 1} for the "
            "completion). Please shorten the prompt or lower max_tokens.",
            "context_length_exceeded",
            "messages",
        )
    return asked if asked is not None else min(room, limits.max_tokens)


async def answer(
    request: Request, body: Any, model: ServedModel, prompts: list[list[int]], shapes: Shapes
) -> Response:
    """Decode `body.n` answers to each prompt and answer with them, whole or streamed (`body.stream`)."""
    server = server_of(request)
    served: ServedRequest = request.state.served
    max_new = min(
        budget(server.engine, gate_of(request).limits, len(p), body.max_new_tokens()) for p in prompts
    )
    copies = [p for p in prompts for _ in range(body.n)]
    events, submitted = _submit(server.engine, copies, model, body, max_new)
    kind = shapes.kinds[1] if body.stream else shapes.kinds[0]
    head = {"id": served.id, "object": kind, "created": int(time.time()), "model": body.model}
    served.prompt_tokens = sum(len(p) for p in prompts)
    if not body.stream:
        try:
            done = await _collect(events, len(copies))
        except asyncio.CancelledError:
            for r in submitted:
                r.cancelled.set()
            raise
        served.completion_tokens = sum(d.completion_tokens for d in done)
        served.response = json.dumps([d.text for d in done], ensure_ascii=False)
        choices = [shapes.choice(d, i) for i, d in enumerate(done)]
        return JSONResponse({**head, "choices": choices, "usage": _usage(served)})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def stream() -> AsyncIterator[str]:
        done: dict[int, Done] = {}
        try:
            for i in range(len(copies)):
                if first := shapes.chunk(i, None, None, True):
                    yield _sse({**head, **first})
            while len(done) < len(copies):
                i, event = await events.get()
                if isinstance(event, Delta):
                    yield _sse({**head, **shapes.chunk(i, event.text, None, False)})
                elif event.finish_reason == "error":
                    done[i] = event
                    served.status_code, served.error_code = 500, "server_error"
                    yield _sse(ApiError(500, event.error or "generation failed", "server_error").body())
                    break
                else:
                    done[i] = event
                    yield _sse({**head, **shapes.chunk(i, None, event.finish_reason, False)})
            if include_usage and served.status_code == 200:
                served.completion_tokens = sum(d.completion_tokens for d in done.values())
                yield _sse({**head, "choices": [], "usage": _usage(served)})
            yield "data: [DONE]\n\n"
        finally:
            for r in submitted:
                r.cancelled.set()  # a client gone mid-stream frees its rows at the next step
            if len(done) < len(copies) and served.status_code == 200:
                served.status_code, served.error_code = 499, "client_closed_request"
            served.completion_tokens = sum(d.completion_tokens for d in done.values())
            served.response = json.dumps([done[i].text for i in sorted(done)], ensure_ascii=False)
            await gate_of(request).finish(request)

    return GatedStream(stream(), media_type="text/event-stream")


def _submit(
    engine: Engine, prompts: list[list[int]], model: ServedModel, body: Any, max_new: int
) -> tuple[asyncio.Queue[tuple[int, Event]], list[EngineRequest]]:
    """Submit one engine request per prompt; their events arrive on the returned queue with their index."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    submitted = []
    for i, ids in enumerate(prompts):
        seed = None if body.seed is None else body.seed + i

        def sink(event: Event, i: int = i) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (i, event))

        request = EngineRequest(
            ids, model.adapter, Sampling(max_new, body.temperature, body.top_p, seed), sink, body.stops()
        )
        engine.submit(request)
        submitted.append(request)
    return events, submitted


async def _collect(events: asyncio.Queue[tuple[int, Event]], n: int) -> list[Done]:
    done: dict[int, Done] = {}
    while len(done) < n:
        i, event = await events.get()
        if isinstance(event, Done):
            done[i] = event
    if any(d.finish_reason == "error" for d in done.values()):
        raise ApiError(
            500, next(d.error for d in done.values() if d.error) or "generation failed", "server_error"
        )
    return [done[i] for i in range(n)]


def _usage(served: ServedRequest) -> dict[str, int]:
    prompt, completion = served.prompt_tokens, served.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
