"""`GET /health` and `GET /metrics` (Prometheus): answered without a key and not logged, for load balancers and
scrapers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from specialize.serve.state import server_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    server = server_of(request)
    return {
        "status": "ok",
        "base_model": server.models.base.id,
        "loaded_adapters": server.engine.loaded_adapters,
        "active_rows": server.engine.active_rows,
        "queued": server.engine.queue_depth,
    }


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    metrics = server_of(request).gate.metrics
    return PlainTextResponse(metrics.render(), media_type=metrics.content_type)
