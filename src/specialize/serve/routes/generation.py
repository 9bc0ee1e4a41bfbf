"""What `/v1/chat/completions` and `/v1/completions` share: token budgets, submitting prompts to the engine, and
answering with the engine's events, whole or streamed as server-sent events.

Each endpoint brings its own shapes (`Shapes`): how a finished answer and a streamed piece look in its response.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from specialize.models.engine import Delta, Done, Engine, Event, PromptTooLongError
from specialize.models.engine import Request as EngineRequest
from specialize.models.generation import Sampling
from specialize.monitor.request_log import ServedRequest
from specialize.serve.gate import ApiError, Gate, GatedStream, Limits, gate_of
from specialize.serve.served_models import ServedModel
from specialize.serve.state import server_of


@dataclass(frozen=True)
class Shapes:
    """How one endpoint shapes its answers: object names (whole, streamed), a finished choice
    (`choice(done, index, prompt_index)`), a streamed piece (`chunk(index, text, finish_reason, first)`; an empty
    dict sends nothing)."""

    kinds: tuple[str, str]
    choice: Callable[[Done, int, int], dict[str, Any]]
    chunk: Callable[[int, str | None, str | None, bool], dict[str, Any]]


def check_conflicts(body: Any) -> None:
    """A 400 naming the field when the body asks for things this server does not serve together."""
    if (conflict := body.conflict()) is not None:
        raise ApiError(
            400, f"Invalid value for '{conflict[0]}': {conflict[1]}.", "unsupported_parameter", conflict[0]
        )


async def encode(engine: Engine, limits: Limits, encoder: Callable[..., list[int]], *args: Any) -> list[int]:
    """Template and tokenize a prompt on a thread (about a second per megabyte of text), with the context length
    as the limit past which a prompt is refused without tokenizing it all."""
    try:
        return await asyncio.to_thread(encoder, *args, engine.context_length - 1)
    except PromptTooLongError as exc:
        raise _context_error(engine, exc.at_least, None, "at least ") from None


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
        raise _context_error(engine, prompt_tokens, asked)
    return asked if asked is not None else min(room, limits.max_tokens)


def _context_error(engine: Engine, prompt_tokens: int, asked: int | None, bound: str = "") -> ApiError:
    return ApiError(
        400,
        f"This model's maximum context length is {engine.context_length} tokens. However, you requested "
        f"{bound}{prompt_tokens + (asked or 1)} tokens ({bound}{prompt_tokens} in the prompt, {asked or 1} for the "
        "completion). Please shorten the prompt or lower max_tokens.",
        "context_length_exceeded",
        "messages",
    )


@dataclass
class _Stream:
    """What a streamed answer has received so far; read when the stream ends, however it ends."""

    submitted: list[EngineRequest]
    done: dict[int, Done] = field(default_factory=dict)


async def answer(
    request: Request,
    body: Any,
    model: ServedModel,
    prompts: list[list[int]],
    shapes: Shapes,
    logprobs: int | None = None,
    echo: bool = False,
) -> Response:
    """Decode `body.n` answers to each prompt and answer with them, whole or streamed (`body.stream`).

    `logprobs=k` asks the engine for each answer token's log-probability and k alternatives, `echo` for the
    prompt's as well.
    """
    engine, gate = server_of(request).engine, gate_of(request)
    served: ServedRequest = request.state.served
    max_new = min(budget(engine, gate.limits, len(p), body.max_new_tokens()) for p in prompts)
    copies = [p for p in prompts for _ in range(body.n)]
    events, submitted = _submit(engine, copies, model, body, max_new, logprobs, echo)
    kind = shapes.kinds[1] if body.stream else shapes.kinds[0]
    head = {"id": served.id, "object": kind, "created": int(time.time()), "model": body.model}
    served.prompt_tokens = sum(len(p) for p in prompts)
    if not body.stream:
        try:
            done = await _collect(events, len(copies))
        finally:
            for r in submitted:
                r.cancelled.set()  # a no-op for finished rows; frees the others when the task is cancelled
        served.completion_tokens = sum(d.completion_tokens for d in done)
        served.response = json.dumps([d.text for d in done], ensure_ascii=False)
        choices = [shapes.choice(d, i, i // body.n) for i, d in enumerate(done)]
        return JSONResponse({**head, "choices": choices, "usage": _usage(served)})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    state = _Stream(submitted)

    async def stream() -> AsyncIterator[str]:
        try:
            for i in range(len(copies)):
                if first := shapes.chunk(i, None, None, True):
                    yield _sse({**head, **first})
            while len(state.done) < len(copies):
                i, event = await events.get()
                if isinstance(event, Delta):
                    yield _sse({**head, **shapes.chunk(i, event.text, None, False)})
                elif event.finish_reason == "error":
                    state.done[i] = event
                    served.status_code, served.error_code = 500, "server_error"
                    served.response = event.error or "generation failed"
                    yield _sse(ApiError(500, served.response, "server_error").body())
                    break
                else:
                    state.done[i] = event
                    yield _sse({**head, **shapes.chunk(i, None, event.finish_reason, False)})
            if include_usage and served.status_code == 200:
                served.completion_tokens = sum(d.completion_tokens for d in state.done.values())
                yield _sse({**head, "choices": [], "usage": _usage(served)})
            yield "data: [DONE]\n\n"
        except Exception as exc:  # a bug must still end the stream in OpenAI's shape, and be logged as a 5xx
            served.status_code, served.error_code = 500, "server_error"
            served.response = f"{type(exc).__name__}: {exc}"
            yield _sse(
                ApiError(500, "The server had an error while streaming the answer.", "server_error").body()
            )

    return GatedStream(stream(), lambda: _closed(gate, request, state, len(copies)))


def _closed(gate: Gate, request: Request, state: _Stream, expected: int) -> None:
    """The end of a streamed answer, however it ended: free its rows and log it (499 if the client left first)."""
    served: ServedRequest = request.state.served
    for r in state.submitted:
        r.cancelled.set()  # a client gone mid-stream frees its rows at the next step
    if len(state.done) < expected and served.status_code == 200:
        served.status_code, served.error_code = 499, "client_closed_request"
    served.completion_tokens = sum(d.completion_tokens for d in state.done.values())
    if served.status_code < 500:
        served.response = json.dumps([state.done[i].text for i in sorted(state.done)], ensure_ascii=False)
    gate.finish(request)


def _submit(
    engine: Engine,
    prompts: list[list[int]],
    model: ServedModel,
    body: Any,
    max_new: int,
    logprobs: int | None,
    echo: bool,
) -> tuple[asyncio.Queue[tuple[int, Event]], list[EngineRequest]]:
    """Submit one engine request per prompt; their events arrive on the returned queue with their index."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    submitted = []
    for i, ids in enumerate(prompts):
        seed = None if body.seed is None else body.seed + i

        def sink(event: Event, i: int = i) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (i, event))

        sampling = Sampling(max_new, body.temperature, body.top_p, seed)
        request = EngineRequest(ids, model.adapter, sampling, sink, body.stops(), logprobs, echo)
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
        error = next(d.error for d in done.values() if d.error) or "generation failed"
        raise ApiError(500, error, "server_error")
    return [done[i] for i in range(n)]


def _usage(served: ServedRequest) -> dict[str, int]:
    prompt, completion = served.prompt_tokens, served.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
