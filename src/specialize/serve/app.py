"""The OpenAI-compatible HTTP API of `specialize serve`: one FastAPI app over the routers in `serve/routes/`.

Thin by design: each route validates its body, hands the engine messages or text, and shapes the engine's events
the way OpenAI's API does, so the official clients work unchanged. Every request, answered or refused, goes
through the gate (`gate.py`): it is written to the registry's request log, and every refusal is an OpenAI-shaped
error with a 4xx code; the server goes on serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from specialize.serve.gate import ApiError
from specialize.serve.routes import chat, completions, feedback, health, models
from specialize.serve.state import Server


class Worker(Protocol):
    """Something that runs beside the server, started and stopped with it (the fine-tuning job runner)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_app(
    server: Server,
    routers: Sequence[APIRouter] = (),
    workers: Sequence[Worker] = (),
    **state: Any,
) -> FastAPI:
    """The API over `server` (its engine is started with the app); `routers` and `workers` add endpoints and
    background work (the fine-tuning API), `state` what their routes read from `app.state`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        for worker in workers:
            worker.start()
        yield
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        server.engine.stop()
        await asyncio.to_thread(server.gate.close)  # the last rows of the request log

    app = FastAPI(title="specialize", lifespan=lifespan)
    app.state.server, app.state.gate = server, server.gate
    for name, value in state.items():
        setattr(app.state, name, value)
    for router in (chat.router, completions.router, models.router, feedback.router, *routers, health.router):
        app.include_router(router)

    # Requests no route takes are refused and logged too (endpoint "unrouted"), without looking at their key.
    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> Response:
        error = ApiError(404, f"Unknown path {request.url.path}.", "unknown_url")
        return await server.gate.refuse_unrouted(request, error)

    @app.exception_handler(405)
    async def wrong_method(request: Request, _: Exception) -> Response:
        message = f"{request.method} is not allowed on {request.url.path}."
        return await server.gate.refuse_unrouted(request, ApiError(405, message, "method_not_allowed"))

    return app
