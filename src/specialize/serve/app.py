"""The OpenAI-compatible HTTP API of `specialize serve`.

Thin by design: each endpoint checks the key, validates the body, turns it into engine requests and shapes the
engine's events the way OpenAI's API does, so the official clients work unchanged. Every request, answered or
refused, is written to the registry's request log; every refusal is an OpenAI-shaped error with a 4xx code, and
the server goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from specialize.data import render_prompt, with_system
from specialize.deploy.api_keys import ApiKeys
from specialize.deploy.engine import Delta, Done, Engine, Event
from specialize.deploy.engine import Request as EngineRequest
from specialize.deploy.request_log import RequestLog, ServedRequest
from specialize.deploy.served_models import ServedModel, ServedModels
from specialize.errors import NotFoundError
from specialize.models.generation import Sampling
from specialize.serve.metrics import ServerMetrics
from specialize.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    field_path,
)

if TYPE_CHECKING:
    from specialize.serve.fine_tuning import FineTuning


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}
        return {
            "error": {
                "message": self.message,
                "type": kind.get(
                    self.status, "invalid_request_error" if self.status < 500 else "server_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512  # per completion; a CPU server answers a few hundred tokens per second in all
    max_upload_bytes: int = 512 * 2**20  # per uploaded training file, OpenAI's limit
    max_active_jobs: int = 8  # unfinished fine-tuning jobs per API key; they train one at a time


@dataclass(frozen=True)
class Gate:
    """What every endpoint does around its own work: `begin` logs the request and checks its key, `parse`
    validates a JSON body, `end` writes the answered request to the log (refusals are logged by the error
    handler)."""

    begin: Callable[[Request, str], Awaitable[ServedRequest]]
    parse: Callable[[Request, type[BaseModel], ServedRequest], Awaitable[Any]]
    end: Callable[[Request], Awaitable[None]]


def create_app(
    engine: Engine,
    models: ServedModels,
    request_log: RequestLog,
    keys: ApiKeys | None,
    limits: Limits = Limits(),
    fine_tuning: FineTuning | None = None,
) -> FastAPI:
    """The API over a started-on-demand engine; `keys=None` serves without authentication.

    With `fine_tuning`, the server also takes training files and fine-tuning jobs (`serve/fine_tuning.py`) and
    trains them in the background while it serves.
    """
    metrics = ServerMetrics(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if fine_tuning is not None:
            fine_tuning.runner.start()
        yield
        if fine_tuning is not None:
            await asyncio.to_thread(fine_tuning.runner.stop)
        engine.stop()

    app = FastAPI(title="specialize", lifespan=lifespan)

    async def record(served: ServedRequest, started: float) -> None:
        served.latency_ms = (time.perf_counter() - started) * 1000
        metrics.observe(served)
        await asyncio.to_thread(request_log.record, served)

    async def authenticate(request: Request, served: ServedRequest) -> None:
        if keys is None:
            return
        header = request.headers.get("authorization", "")
        secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        key_id = await asyncio.to_thread(keys.verify, secret) if secret else None
        if key_id is None:
            raise ApiError(
                401,
                "Incorrect or missing API key. Send `Authorization: Bearer <key>`; `specialize keys create` makes one.",
                "invalid_api_key",
            )
        served.key_id = key_id

    async def parse(request: Request, schema: type[BaseModel], served: ServedRequest) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.", "invalid_json") from None
        served.request = body if isinstance(body, dict) else {"body": body}
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            served.model = body["model"]
        try:
            return schema.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = field_path(tuple(first["loc"]))
            raise ApiError(
                400,
                f"Invalid value for '{where or 'body'}': {first['msg']}.",
                "invalid_request",
                where or None,
            ) from None

    async def begin(request: Request, endpoint: str, prefix: str = "req") -> ServedRequest:
        served = ServedRequest(f"{prefix}-{secrets.token_hex(12)}", endpoint)
        request.state.served, request.state.started = served, time.perf_counter()
        await authenticate(request, served)
        return served

    async def end(request: Request) -> None:
        await record(request.state.served, request.state.started)

    def lookup(model_id: str) -> ServedModel:
        try:
            return models.get(model_id)
        except NotFoundError as exc:
            raise ApiError(404, str(exc), "model_not_found", "model") from None

    def budget(prompt_tokens: int, asked: int | None) -> int:
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

    def start(
        prompts: list[list[int]], model: ServedModel, body: Any, max_new: int
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
                ids, model, Sampling(max_new, body.temperature, body.top_p, seed), sink, body.stops()
            )
            engine.submit(request)
            submitted.append(request)
        return events, submitted

    async def collect(events: asyncio.Queue[tuple[int, Event]], n: int) -> list[Done]:
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

    def usage(served: ServedRequest) -> dict[str, int]:
        prompt, completion = served.prompt_tokens, served.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def generate(
        request: Request,
        endpoint: str,
        schema: type[BaseModel],
        prefix: str,
        prompts_of: Callable[[Any, ServedModel], list[str]],
        shape: Callable[[Done, int], dict[str, Any]],
        chunk: Callable[[int, str | None, str | None, bool], dict[str, Any]],
        kinds: tuple[str, str],
    ) -> Response:
        served = await begin(request, endpoint, prefix)
        started = request.state.started
        body = await parse(request, schema, served)
        model = lookup(body.model)
        texts = prompts_of(body, model)
        ids = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        max_new = min(budget(len(p), body.max_new_tokens()) for p in ids)
        copies = [p for p in ids for _ in range(body.n)]
        events, submitted = start(copies, model, body, max_new)
        created = int(time.time())
        kind = kinds[1] if body.stream else kinds[0]
        head = {"id": served.id, "object": kind, "created": created, "model": body.model}
        served.prompt_tokens = sum(len(p) for p in ids)
        if not body.stream:
            try:
                done = await collect(events, len(copies))
            except asyncio.CancelledError:
                for r in submitted:
                    r.cancelled.set()
                raise
            served.completion_tokens = sum(d.completion_tokens for d in done)
            served.response = json.dumps([d.text for d in done], ensure_ascii=False)
            payload = {**head, "choices": [shape(d, i) for i, d in enumerate(done)], "usage": usage(served)}
            await record(served, started)
            return JSONResponse(payload)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:
            done: dict[int, Done] = {}
            try:
                for i in range(len(copies)):
                    if first := chunk(i, None, None, True):
                        yield _sse({**head, **first})
                while len(done) < len(copies):
                    i, event = await events.get()
                    if isinstance(event, Delta):
                        yield _sse({**head, **chunk(i, event.text, None, False)})
                    elif event.finish_reason == "error":
                        done[i] = event
                        served.status_code, served.error_code = 500, "server_error"
                        yield _sse(ApiError(500, event.error or "generation failed", "server_error").body())
                        break
                    else:
                        done[i] = event
                        yield _sse({**head, **chunk(i, None, event.finish_reason, False)})
                if include_usage and served.status_code == 200:
                    served.completion_tokens = sum(d.completion_tokens for d in done.values())
                    yield _sse({**head, "choices": [], "usage": usage(served)})
                yield "data: [DONE]\n\n"
            finally:
                for r in submitted:
                    r.cancelled.set()  # a client gone mid-stream frees its rows at the next step
                if len(done) < len(copies) and served.status_code == 200:
                    served.status_code, served.error_code = 499, "client_closed_request"
                served.completion_tokens = sum(d.completion_tokens for d in done.values())
                served.response = json.dumps([done[i].text for i in sorted(done)], ensure_ascii=False)
                await record(served, started)

        return StreamingResponse(stream(), media_type="text/event-stream")

    def chat_prompts(body: ChatCompletionRequest, model: ServedModel) -> list[str]:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        if model.system_prompt and messages[0]["role"] != "system":
            messages = with_system(messages, model.system_prompt)  # the prompt the adapter was trained with
        return [render_prompt(engine.tokenizer, messages)]

    def chat_choice(done: Done, i: int) -> dict[str, Any]:
        return {
            "index": i,
            "message": {"role": "assistant", "content": done.text},
            "finish_reason": done.finish_reason,
            "logprobs": None,
        }

    def chat_chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        return {"choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def text_choice(done: Done, i: int) -> dict[str, Any]:
        return {"index": i, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}

    def text_chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        if first:
            return {}
        return {"choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(
            request,
            "chat.completions",
            ChatCompletionRequest,
            "chatcmpl",
            chat_prompts,
            chat_choice,
            chat_chunk,
            ("chat.completion", "chat.completion.chunk"),
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(
            request,
            "completions",
            CompletionRequest,
            "cmpl",
            lambda body, _: body.prompts(),
            text_choice,
            text_chunk,
            ("text_completion", "text_completion"),
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        await begin(request, "models")
        listed = await asyncio.to_thread(models.list)
        await end(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": m.id,
                        "object": "model",
                        "created": m.created,
                        "owned_by": "specialize" if m.adapter else "base",
                        "parent": None if m.adapter is None else models.base.id,
                    }
                    for m in listed
                ],
            }
        )

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        served = await begin(request, "models")
        served.model = model_id
        model = await asyncio.to_thread(lookup, model_id)
        await end(request)
        return JSONResponse(
            {"id": model.id, "object": "model", "created": model.created, "owned_by": "specialize"}
        )

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        served = await begin(request, "feedback")
        body: FeedbackRequest = await parse(request, FeedbackRequest, served)
        if not body.has_content():
            raise ApiError(400, "Give a rating, a correction, or both.", "invalid_request", "rating")
        try:
            feedback_id = await asyncio.to_thread(
                request_log.add_feedback,
                body.request_id,
                served.key_id,
                body.rating,
                body.correction,
                body.comment,
            )
        except NotFoundError as exc:
            raise ApiError(404, str(exc), "request_not_found", "request_id") from None
        await end(request)
        return JSONResponse({"id": feedback_id, "object": "feedback", "request_id": body.request_id})

    if fine_tuning is not None:
        from specialize.serve.fine_tuning import fine_tuning_router

        app.include_router(fine_tuning_router(fine_tuning, Gate(begin, parse, end), limits))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "base_model": models.base.id,
            "loaded_adapters": engine.loaded_adapters,
            "active_rows": engine.active_rows,
            "queued": engine.queue_depth,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        served = getattr(request.state, "served", None)
        if served is not None:
            served.status_code, served.error_code = exc.status, exc.code
            served.response = exc.message
            await record(served, request.state.started)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> Response:
        return JSONResponse(
            ApiError(404, f"Unknown path {request.url.path}.", "unknown_url").body(), status_code=404
        )

    @app.exception_handler(405)
    async def wrong_method(request: Request, _: Exception) -> Response:
        message = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse(ApiError(405, message, "method_not_allowed").body(), status_code=405)

    return app


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
