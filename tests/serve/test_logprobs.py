"""Log-probabilities over the API (issue 14, defect 5: `logprobs` was silently ignored and `echo` refused), checked
against the model's own forward pass; and the fields this server does not serve, refused by name."""

from __future__ import annotations

import pytest
import torch
from inprocess import anyio_backend, api  # noqa: F401  (fixtures)
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.anyio
QUESTION = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture(scope="module")
def reference(api):
    """Log-probabilities of each token after the ones before it, from transformers' forward pass."""
    model = AutoModelForCausalLM.from_pretrained(api.base, dtype=torch.float32).eval()

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            scores = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return scores[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    return logprobs


async def test_chat_logprobs_are_the_models_own(api, reference):
    body = {"model": api.base, "messages": QUESTION, "max_tokens": 6, "temperature": 0}
    async with api.client() as client:
        reply = (
            await client.post("/v1/chat/completions", json={**body, "logprobs": True, "top_logprobs": 3})
        ).json()
        plain = (await client.post("/v1/chat/completions", json=body)).json()
    choice = reply["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert choice["message"]["content"] == plain["choices"][0]["message"]["content"]  # asking changes nothing
    assert plain["choices"][0]["logprobs"] is None
    assert len(tokens) == reply["usage"]["completion_tokens"] - (choice["finish_reason"] == "stop")
    assert b"".join(bytes(t["bytes"]) for t in tokens).decode() == choice["message"]["content"]
    for token in tokens:
        top = [t["logprob"] for t in token["top_logprobs"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert token["logprob"] == pytest.approx(top[0])  # greedy: the likeliest token was chosen
    # each token's bytes name its id (byte-level BPE): the logprobs are those of the forward pass over them
    id_of = {api.engine.token_bytes(i): i for i in range(api.engine.vocab_size)}
    prompt, answer = api.engine.encode_chat(QUESTION), [id_of[bytes(t["bytes"])] for t in tokens]
    expected = reference(prompt + answer)[len(prompt) - 1 :]
    assert tokens and [t["logprob"] for t in tokens] == pytest.approx(expected.tolist(), abs=1e-4)


async def test_completions_echo_the_prompts_logprobs(api, reference):
    text = "The capital of France is Paris."
    ids = api.engine.encode_text(text)
    body = {"model": api.base, "max_tokens": 1, "temperature": 0, "logprobs": 2, "echo": True}
    async with api.client() as client:
        by_text = (await client.post("/v1/completions", json={**body, "prompt": text})).json()
        by_ids = (await client.post("/v1/completions", json={**body, "prompt": [ids, ids[:3]]})).json()
    choice = by_text["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"].startswith(text) and len(logprobs["tokens"]) == len(ids) + 1
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1 : len(ids)] == pytest.approx(reference(ids).tolist(), abs=1e-4)
    assert "".join(logprobs["tokens"][: len(ids)]) == text
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[len(ids)] == len(text)
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    # the same prompt given as token ids scores the same; prompts of different lengths in one request
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(
        logprobs["token_logprobs"], abs=1e-5
    )
    short = by_ids["choices"][1]["logprobs"]["token_logprobs"]
    assert short[:3] == pytest.approx(logprobs["token_logprobs"][:3], abs=1e-5)
    async with api.client() as client:  # a one-token prompt: nothing to score but the answer
        one = (await client.post("/v1/completions", json={**body, "prompt": ids[:1]})).json()["choices"][0]
    assert one["logprobs"]["token_logprobs"][0] is None and len(one["logprobs"]["tokens"]) == 2


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"logit_bias": {"42": 100}}, "logit_bias"),
        ("/v1/chat/completions", {"logprobs": True, "stream": True}, "logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {"suffix": "the end"}, "suffix"),
        ("/v1/completions", {"echo": True, "stream": True}, "echo"),
        ("/v1/completions", {"prompt": [[1, 2, 10**9]]}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
    ],
)
async def test_fields_the_server_does_not_serve_are_refused_by_name(api, path, extra, param):
    body = {
        "model": api.base,
        "max_tokens": 2,
        **({"messages": QUESTION} if "chat" in path else {"prompt": "Hi"}),
    }
    async with api.client() as client:
        reply = await client.post(path, json={**body, **extra})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    async with api.client() as client:  # what is supported passes: text answers, no tools
        fine = await client.post(
            path, json={**body, "response_format": {"type": "text"}} if "chat" in path else body
        )
    assert fine.status_code == 200
