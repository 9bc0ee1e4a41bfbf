"""`POST /v1/chat/completions`: chat messages in, the model's answers out (whole or streamed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from specialize.models.engine import Done
from specialize.serve.gate import GatedRoute, gate_of
from specialize.serve.routes.generation import Shapes, answer
from specialize.serve.schemas import ChatCompletionRequest
from specialize.serve.state import server_of

router = APIRouter(route_class=GatedRoute)


@router.post("/v1/chat/completions", name="chat.completions")
async def chat_completions(request: Request) -> Response:
    body: ChatCompletionRequest = await gate_of(request).parse(request, ChatCompletionRequest)
    server = server_of(request)
    model = server.lookup(body.model)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    # the system prompt the adapter was trained with, unless the conversation brings its own
    prompt = server.engine.encode_chat(messages, model.system_prompt)
    return await answer(request, body, model, [prompt], SHAPES)


def _choice(done: Done, i: int) -> dict[str, Any]:
    return {
        "index": i,
        "message": {"role": "assistant", "content": done.text},
        "finish_reason": done.finish_reason,
        "logprobs": None,
    }


def _chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
    return {"choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}]}


SHAPES = Shapes(("chat.completion", "chat.completion.chunk"), _choice, _chunk)
