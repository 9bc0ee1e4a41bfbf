"""`POST /v1/completions`: OpenAI's legacy endpoint, prompts (text, or token ids) continued as they are, with no
chat template; `logprobs` and `echo` give the log-probabilities of the answer's and the prompt's tokens, which is
how evaluation harnesses (lm-evaluation-harness' `local-completions`) score the choices of a question."""

from __future__ import annotations

import asyncio
import codecs
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from specialize.models.engine import Done, Token
from specialize.serve.gate import ApiError, GatedRoute, gate_of
from specialize.serve.routes.generation import Shapes, answer, check_conflicts, encode
from specialize.serve.schemas import CompletionRequest
from specialize.serve.state import server_of

router = APIRouter(route_class=GatedRoute)
KINDS = ("text_completion", "text_completion")  # the object of a whole answer and of a streamed piece


@router.post("/v1/completions", name="completions")
async def completions(request: Request) -> Response:
    gate = gate_of(request)
    body: CompletionRequest = await gate.parse(request, CompletionRequest)
    check_conflicts(body)
    server = server_of(request)
    engine = server.engine
    model = server.lookup(body.model, request)
    given = body.prompts()
    if isinstance(given[0], str):
        texts = [str(text) for text in given]
        prompts = [await encode(engine, gate.limits, engine.encode_text, text) for text in texts]
    else:
        prompts = [list(ids) for ids in given if not isinstance(ids, str)]
        if any(not 0 <= t < engine.vocab_size for ids in prompts for t in ids):
            raise ApiError(
                400,
                f"Invalid value for 'prompt': token ids must be in [0, {engine.vocab_size}) for this model.",
                "invalid_request",
                "prompt",
            )
        texts = await asyncio.to_thread(lambda: [engine.decode(ids) for ids in prompts])
    if not all(prompts):
        raise ApiError(400, "Invalid value for 'prompt': a prompt is empty.", "invalid_request", "prompt")
    echoed = texts if body.echo else None
    shapes = Shapes(KINDS, partial(_choice, echoed, [len(t) for t in texts]), _chunk)
    with_prompt = body.echo and body.logprobs is not None
    return await answer(request, body, model, prompts, shapes, logprobs=body.logprobs, echo=with_prompt)


def _choice(
    echoed: list[str] | None, prompt_lengths: list[int], done: Done, i: int, prompt: int
) -> dict[str, Any]:
    """A choice; with `echoed` prompts, its text and log-probabilities start with the prompt's."""
    text = done.text if echoed is None else echoed[prompt] + done.text
    tokens = (done.prompt_logprobs or []) + (done.logprobs or []) if echoed is not None else done.logprobs
    logprobs = None
    if done.logprobs is not None and tokens is not None:
        start = 0 if echoed is not None else prompt_lengths[prompt]
        logprobs = {
            "tokens": [t.text for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [
                None if t.logprob is None else {a.text: a.logprob for a in t.top} for t in tokens
            ],
            "text_offset": _offsets(tokens, start),
        }
    return {"index": i, "text": text, "finish_reason": done.finish_reason, "logprobs": logprobs}


def _offsets(tokens: list[Token], start: int) -> list[int]:
    """Where each token starts in the text, in characters: a token holding part of a UTF-8 character adds
    nothing until the character is complete."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, at = [], start
    for token in tokens:
        offsets.append(at)
        at += len(decoder.decode(token.bytes))
    return offsets


def _chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    if first:
        return {}
    return {"choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}]}
