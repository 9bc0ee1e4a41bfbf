"""`POST /v1/completions`: OpenAI's legacy endpoint, text prompts continued as they are (no chat template)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from specialize.models.engine import Done
from specialize.serve.gate import GatedRoute, gate_of
from specialize.serve.routes.generation import Shapes, answer
from specialize.serve.schemas import CompletionRequest
from specialize.serve.state import server_of

router = APIRouter(route_class=GatedRoute)


@router.post("/v1/completions", name="completions")
async def completions(request: Request) -> Response:
    body: CompletionRequest = await gate_of(request).parse(request, CompletionRequest)
    server = server_of(request)
    model = server.lookup(body.model)
    prompts = [server.engine.encode_text(text) for text in body.prompts()]
    return await answer(request, body, model, prompts, SHAPES)


def _choice(done: Done, i: int) -> dict[str, Any]:
    return {"index": i, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}


def _chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    if first:
        return {}
    return {"choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}


SHAPES = Shapes(("text_completion", "text_completion"), _choice, _chunk)
