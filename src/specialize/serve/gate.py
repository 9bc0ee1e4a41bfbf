"""The request gate of `specialize serve`: what every API request goes through, whatever its endpoint.

A route of a gated router (`APIRouter(route_class=GatedRoute)`) does only its own work. Around it the gate starts
the request's log row, checks its API key, reads its body (up to `Limits.max_body_bytes`, else 413) and decodes
and validates it off the event loop, shapes every refusal the way OpenAI's API does (`{"error": {"message",
"type", "param", "code"}}`), and writes the request to the registry's request log exactly once, whatever happens:
answered, refused, failed (5xx, with its error), abandoned by its client mid-stream or cut by a reset connection.
Routes reach the gate, and the rest of the server, through the app's state (`serve/state.py`), so a test can
mount one router over one gate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from specialize.monitor.request_log import RequestLog, ServedRequest
from specialize.serve.api_keys import ApiKeys
from specialize.serve.metrics import ServerMetrics
from specialize.serve.schemas import field_path

log = logging.getLogger(__name__)

# The id prefix of each endpoint's requests, as OpenAI's ids have them; the others are `req-...`.
ID_PREFIXES = {"chat.completions": "chatcmpl", "completions": "cmpl"}


class ApiError(Exception):
    """An OpenAI-shaped error response; `detail`, if given, is what the request log keeps instead of `message`
    (a 5xx tells the client little and the log everything)."""

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.detail = detail or message

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

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512  # per completion; a CPU server answers a few hundred tokens per second in all
    max_body_bytes: int = 4 * 2**20  # per JSON body: a context of 128k tokens is about 0.5 MB of text
    max_upload_bytes: int = 512 * 2**20  # per uploaded training file, OpenAI's limit
    max_active_jobs: int = 8  # unfinished fine-tuning jobs per API key; they train one at a time


class Gate:
    """Authentication, body reading, error shaping and logging, shared by every gated route.

    `keys=None` serves without authentication: every request then sees everything, as an admin key does. Log rows
    are written by one thread of the gate's own, in order: a write is queued by a plain function call, which no
    cancellation of the request's task can interrupt or undo.
    """

    def __init__(
        self,
        request_log: RequestLog,
        keys: ApiKeys | None,
        metrics: ServerMetrics,
        limits: Limits = Limits(),
    ) -> None:
        self.request_log = request_log
        self.keys = keys
        self.metrics = metrics
        self.limits = limits
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-log")

    async def begin(self, request: Request, endpoint: str) -> ServedRequest:
        """Start the request's log row and check its key; the row is `request.state.served` from here on."""
        served = ServedRequest(f"{ID_PREFIXES.get(endpoint, 'req')}-{secrets.token_hex(12)}", endpoint)
        request.state.served, request.state.started, request.state.logged = served, time.perf_counter(), False
        request.state.admin = self.keys is None
        await self.authenticate(request, served)
        return served

    async def authenticate(self, request: Request, served: ServedRequest) -> None:
        if self.keys is None:
            return
        header = request.headers.get("authorization", "")
        secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        key = await asyncio.to_thread(self.keys.verify, secret) if secret else None
        if key is None:
            raise ApiError(
                401,
                "Incorrect or missing API key. Send `Authorization: Bearer <key>`; `specialize keys create` makes one.",
                "invalid_api_key",
            )
        served.key_id, request.state.admin = key.id, key.admin

    async def read(self, request: Request, limit: int) -> bytes:
        """The request's body, refused with a 413 as soon as it is known to be over `limit` bytes: from its
        Content-Length before a byte is read, else once that many have arrived."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(None, limit)
        return bytes(body)

    async def parse(self, request: Request, schema: type[BaseModel]) -> Any:
        """The JSON body validated by `schema`; a 400 naming the first bad field otherwise.

        Decoding and validating a body of megabytes takes tens of milliseconds: they run on a thread, so that the
        event loop goes on answering other requests meanwhile.
        """
        raw = await self.read(request, self.limits.max_body_bytes)
        return await asyncio.to_thread(_decode, raw, schema, request.state.served)

    def finish(self, request: Request) -> Future[None] | None:
        """Queue the request's row for the log and count it in the metrics, once: later calls do nothing.

        A plain function, not a coroutine: it runs to its end even in a task being cancelled.
        """
        state = request.state
        if getattr(state, "logged", True):  # written already, or never begun (no row to write)
            return None
        state.logged = True
        served: ServedRequest = state.served
        served.latency_ms = (time.perf_counter() - state.started) * 1000
        self.metrics.observe(served)
        try:
            return self._writer.submit(self._write, served)
        except RuntimeError:  # the writer has stopped (the server is shutting down): write it here
            self._write(served)
            return None

    async def logged(self, request: Request) -> None:
        """Finish the request and wait until its row is written (an answer's row exists before its client reads
        the answer). Shielded: if this task is cancelled, the write still happens."""
        if (written := self.finish(request)) is not None:
            await asyncio.shield(asyncio.wrap_future(written))

    async def refuse(self, request: Request, error: ApiError) -> Response:
        """The OpenAI-shaped answer to a refused request, logged with its status, code and error."""
        served = getattr(request.state, "served", None)
        if served is not None:
            served.status_code, served.error_code, served.response = error.status, error.code, error.detail
            await self.logged(request)
        return error.response()

    async def refuse_unrouted(self, request: Request, error: ApiError) -> Response:
        """Refuse and log a request that no route takes (an unknown path, a wrong method)."""
        served = ServedRequest(f"req-{secrets.token_hex(12)}", "unrouted")
        request.state.served, request.state.started, request.state.logged = served, time.perf_counter(), False
        return await self.refuse(request, error)

    def abandon(self, request: Request) -> None:
        """Log a request whose client left before its answer (status 499, as nginx counts them)."""
        served = getattr(request.state, "served", None)
        if served is not None and served.status_code < 400:
            served.status_code, served.error_code = 499, "client_closed_request"
        self.finish(request)

    def flush(self) -> None:
        """Wait until every queued row is written."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Write what is queued and stop the writer (the server is stopping)."""
        self._writer.shutdown(wait=True)

    def _write(self, served: ServedRequest) -> None:
        try:
            self.request_log.record(served)
        except Exception:  # a failed write (a locked or full database) must not stop the writer
            log.exception("cannot write request %s to the request log", served.id)


# The most arrays and objects, and values, a JSON body may hold, counted as brackets and commas in its text (so
# those inside strings count too). Python's JSON parser holds the GIL, every other thread waiting, for as long as it
# runs, and its time grows with the values it makes: 4 MB of one-element arrays took 1.4 s, 4 MB of text 40 ms.
# A request this server answers holds a few thousand of them (2,048 messages, prompts of a few thousand tokens).
MAX_JSON_CONTAINERS = 2**14
MAX_JSON_VALUES = 2**18


def _decode(raw: bytes, schema: type[BaseModel], served: ServedRequest) -> Any:
    """Parse and validate a JSON body (on a thread); the parsed body goes on the request's log row."""
    containers = raw.count(b"[") + raw.count(b"{")
    values = containers + raw.count(b",")
    if containers > MAX_JSON_CONTAINERS or values > MAX_JSON_VALUES:
        served.request = {"bytes": len(raw), "arrays_and_objects": containers, "values": values}
        raise ApiError(
            413,
            f"The request body holds {containers:,} brackets and {values:,} values or more (counted in its text), "
            f"more than this server parses: {MAX_JSON_CONTAINERS:,} arrays and objects, {MAX_JSON_VALUES:,} "
            "values. Send fewer messages or prompts per request.",
            "request_too_large",
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", "invalid_json") from None
    served.request = body if isinstance(body, dict) else {"body": body}
    where = _undecodable(body, "")
    if where is not None:
        raise ApiError(
            400,
            f"Invalid value for '{where or 'body'}': not valid Unicode (it holds a lone surrogate such as "
            "\\ud800); send the text as UTF-8.",
            "invalid_unicode",
            where or None,
        )
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        served.model = body["model"]
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc.errors()) from None


def _undecodable(value: Any, where: str) -> str | None:
    """The path of the first string (or key) in a parsed JSON value that is no valid Unicode, else None.

    JSON's `\\ud800` escapes decode to lone surrogates, which no UTF-8 encoder (the database's, Prometheus') takes.
    """
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else where
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _undecodable(item, f"{where}[{i}]")) is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if not _encodable(key):
                return where
            if (found := _undecodable(item, path)) is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(errors: Any) -> ApiError:
    """A 400 for pydantic's (or FastAPI's) validation errors, naming the first bad field."""
    first = errors[0]
    loc = tuple(first["loc"])
    if loc and loc[0] in ("body", "query", "path"):  # FastAPI's own locations: the field is what follows
        loc = loc[1:]
    where = field_path(loc)
    unsupported = first["type"] == "unsupported"
    return ApiError(
        400,
        f"Invalid value for '{where or 'body'}': {first['msg']}.",
        "unsupported_parameter" if unsupported else "invalid_request",
        where or None,
    )


def _too_large(declared: int | None, limit: int) -> ApiError:
    size = f" ({declared:,} bytes)" if declared is not None else ""
    return ApiError(
        413,
        f"The request body{size} is over this server's limit of {limit:,} bytes; send less, or start the server "
        "with a larger --max-body-bytes.",
        "request_too_large",
    )


def gate_of(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


class GatedStream(StreamingResponse):
    """A streamed answer of a gated route. `on_close` runs when the response ends, however it ends: read to the
    end, abandoned by the client, or cut by a reset connection; it must be a plain function (it runs while the
    task may be cancelled) and is where the stream writes its request's log row."""

    def __init__(self, content: AsyncIterable[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class GatedRoute(APIRoute):
    """A route whose requests pass the gate: begun and authenticated before the endpoint runs, refusals shaped
    and logged, unexpected errors answered 500 and logged with their error, answers logged (a `GatedStream` logs
    itself when it ends). The route's `name` is the endpoint recorded in the log and the metrics."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()
        endpoint = self.name

        async def gated(request: Request) -> Response:
            gate = gate_of(request)
            try:
                await gate.begin(request, endpoint)
                response: Response = await handler(request)
            except ApiError as error:
                return await gate.refuse(request, error)
            except RequestValidationError as exc:  # query and path parameters, checked by FastAPI
                return await gate.refuse(request, _invalid(exc.errors()))
            except HTTPException as exc:
                return await gate.refuse(
                    request, ApiError(exc.status_code, str(exc.detail), "invalid_request")
                )
            except ClientDisconnect:  # gone while sending its body
                gate.abandon(request)
                return Response(status_code=499)
            except asyncio.CancelledError:
                gate.abandon(request)
                raise
            except Exception as exc:
                log.exception("%s %s failed", request.method, request.url.path)
                served = getattr(request.state, "served", None)
                message = "The server had an error while processing your request" + (
                    f" {served.id}." if served is not None else "."
                )
                failed = ApiError(500, message, "server_error", detail=f"{type(exc).__name__}: {exc}")
                return await gate.refuse(request, failed)
            if not isinstance(response, GatedStream):
                await gate.logged(request)
            return response

        return gated
