"""`POST /v1/chat/completions`: chat messages in, the model's answers out (whole or streamed), with the answer
tokens' log-probabilities when asked (`logprobs`, `top_logprobs`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from specialize.models.engine import Done, Token
from specialize.serve.gate import GatedRoute, gate_of
from specialize.serve.routes.generation import Shapes, answer, check_conflicts, encode
from specialize.serve.schemas import ChatCompletionRequest
from specialize.serve.state import server_of

router = APIRouter(route_class=GatedRoute)


@router.post("/v1/chat/completions", name="chat.completions")
async def chat_completions(request: Request) -> Response:
    gate = gate_of(request)
    body: ChatCompletionRequest = await gate.parse(request, ChatCompletionRequest)
    check_conflicts(body)
    server = server_of(request)
    model = server.lookup(body.model, request)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    # the system prompt the adapter was trained with, unless the conversation brings its own
    prompt = await encode(
        server.engine, gate.limits, server.engine.encode_chat, messages, model.system_prompt
    )
    return await answer(request, body, model, [prompt], SHAPES, logprobs=body.top_logprobs_asked())


def _choice(done: Done, i: int, _: int) -> dict[str, Any]:
    logprobs = None
    if done.logprobs is not None:
        logprobs = {"content": [_token(t, with_top=True) for t in done.logprobs], "refusal": None}
    return {
        "index": i,
        "message": {"role": "assistant", "content": done.text},
        "finish_reason": done.finish_reason,
        "logprobs": logprobs,
    }


def _token(token: Token, with_top: bool = False) -> dict[str, Any]:
    shaped: dict[str, Any] = {"token": token.text, "logprob": token.logprob, "bytes": list(token.bytes)}
    if with_top:
        shaped["top_logprobs"] = [_token(t) for t in token.top]
    return shaped


def _chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
    return {"choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}]}


SHAPES = Shapes(("chat.completion", "chat.completion.chunk"), _choice, _chunk)
