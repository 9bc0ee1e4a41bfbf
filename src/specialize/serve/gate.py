"""The request gate of `specialize serve`: what every API request goes through, whatever its endpoint.

A route of a gated router (`APIRouter(route_class=GatedRoute)`) does only its own work. Around it the gate starts
the request's log row, checks its API key, reads and validates its JSON body, shapes every refusal the way
OpenAI's API does (`{"error": {"message", "type", "param", "code"}}` with a 4xx code) and writes the request, answered
or refused, to the registry's request log and the Prometheus metrics. Routes reach the gate, and the rest of the
server, through the app's state (`serve/state.py`), so a test can mount one router over one gate.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from specialize.monitor.request_log import RequestLog, ServedRequest
from specialize.serve.api_keys import ApiKeys
from specialize.serve.metrics import ServerMetrics
from specialize.serve.schemas import field_path

# The id prefix of each endpoint's requests, as OpenAI's ids have them; the others are `req-...`.
ID_PREFIXES = {"chat.completions": "chatcmpl", "completions": "cmpl"}


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

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512  # per completion; a CPU server answers a few hundred tokens per second in all
    max_upload_bytes: int = 512 * 2**20  # per uploaded training file, OpenAI's limit
    max_active_jobs: int = 8  # unfinished fine-tuning jobs per API key; they train one at a time


class Gate:
    """Authentication, body parsing, error shaping and logging, shared by every gated route.

    `keys=None` serves without authentication (the request's key id is then None).
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

    async def begin(self, request: Request, endpoint: str) -> ServedRequest:
        """Start the request's log row and check its key; the row is `request.state.served` from here on."""
        served = ServedRequest(f"{ID_PREFIXES.get(endpoint, 'req')}-{secrets.token_hex(12)}", endpoint)
        request.state.served, request.state.started = served, time.perf_counter()
        await self.authenticate(request, served)
        return served

    async def authenticate(self, request: Request, served: ServedRequest) -> None:
        if self.keys is None:
            return
        header = request.headers.get("authorization", "")
        secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        key_id = await asyncio.to_thread(self.keys.verify, secret) if secret else None
        if key_id is None:
            raise ApiError(
                401,
                "Incorrect or missing API key. Send `Authorization: Bearer <key>`; `specialize keys create` makes one.",
                "invalid_api_key",
            )
        served.key_id = key_id

    async def parse(self, request: Request, schema: type[BaseModel]) -> Any:
        """The JSON body validated by `schema`; a 400 naming the first bad field otherwise."""
        served: ServedRequest = request.state.served
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

    async def finish(self, request: Request) -> None:
        """Write the request's row to the log and the metrics."""
        served: ServedRequest = request.state.served
        served.latency_ms = (time.perf_counter() - request.state.started) * 1000
        self.metrics.observe(served)
        await asyncio.to_thread(self.request_log.record, served)

    async def refuse(self, request: Request, error: ApiError) -> Response:
        """The OpenAI-shaped answer to a refused request, logged with its status and code."""
        served = getattr(request.state, "served", None)
        if served is not None:
            served.status_code, served.error_code = error.status, error.code
            served.response = error.message
            await self.finish(request)
        return error.response()


def gate_of(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


class GatedStream(StreamingResponse):
    """A streamed answer of a gated route: it writes its request's log row itself when the stream ends."""


class GatedRoute(APIRoute):
    """A route whose requests pass the gate: begun and authenticated before the endpoint runs, refusals shaped
    and logged, answers logged (a `GatedStream` logs itself when it ends). The route's `name` is the endpoint
    recorded in the log and the metrics."""

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
            if not isinstance(response, GatedStream):
                await gate.finish(request)
            return response

        return gated
