"""`GET /v1/models` and `GET /v1/models/{id}`: the base model and the fine-tuned runs this server answers for."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from specialize.serve.gate import GatedRoute
from specialize.serve.state import server_of

router = APIRouter(route_class=GatedRoute)


@router.get("/v1/models", name="models")
async def list_models(request: Request) -> Response:
    models = server_of(request).models
    listed = await asyncio.to_thread(models.list, request.state.served.key_id, request.state.admin)
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


@router.get("/v1/models/{model_id:path}", name="models")
async def get_model(model_id: str, request: Request) -> Response:
    request.state.served.model = model_id
    model = await asyncio.to_thread(server_of(request).lookup, model_id, request)
    return JSONResponse(
        {"id": model.id, "object": "model", "created": model.created, "owned_by": "specialize"}
    )
