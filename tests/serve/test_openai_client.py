"""The official `openai` client against a live `specialize serve` on 127.0.0.1."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch
from live import live_server  # noqa: F401  (fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.data import render_prompt

QUESTION = [{"role": "user", "content": "Label this message: where is my delivery 7"}]
PARITY = [{"role": "user", "content": "Is 12 even? Answer alpha or omega."}]


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url, api_key=live_server.key, max_retries=0, timeout=60)


def reference(live_server, model_id: str, messages, max_tokens: int = 12) -> str:
    """What transformers' own greedy `generate` answers with the same weights (adapter merged in by PEFT)."""
    tokenizer = AutoTokenizer.from_pretrained(live_server.base)
    model = AutoModelForCausalLM.from_pretrained(live_server.base, dtype=torch.float32)
    if model_id != live_server.base:
        from peft import PeftModel

        run_dir = Path(live_server.registry.get_run(model_id)["run_dir"])
        model = PeftModel.from_pretrained(model, run_dir / "train" / "adapter")
    enc = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.eval().generate(
            **enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def ask(client, model: str, messages, max_tokens: int = 12) -> str:
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content


def test_models_lists_the_base_and_every_finished_run(client, live_server):
    ids = {m.id for m in client.models.list()}
    assert ids == {live_server.base, *live_server.runs.values()}
    assert client.models.retrieve(live_server.runs["a"]).id == live_server.runs["a"]


def test_chat_answers_what_transformers_generates_and_is_logged(client, live_server):
    run = live_server.runs["a"]
    reply = client.chat.completions.create(model=run, messages=QUESTION, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.model == run
    assert reply.choices[0].message.content == reference(live_server, run, QUESTION)
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 10
    from specialize.monitor.request_log import RequestLog

    [logged] = [r for r in RequestLog(live_server.registry).requests_for(run) if r["id"] == reply.id]
    assert logged["status_code"] == 200 and logged["key_id"].startswith("key_")
    assert logged["completion_tokens"] == reply.usage.completion_tokens and logged["latency_ms"] > 0
    assert json.loads(logged["response"]) == [reply.choices[0].message.content]


def test_streaming_sends_the_same_answer_in_pieces(client, live_server):
    run = live_server.runs["a"]
    whole = ask(client, run, QUESTION)
    stream = client.chat.completions.create(
        model=run,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole and len(pieces) >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(pieces)


def test_the_model_field_switches_adapters_per_request(client, live_server):
    a, b, base = live_server.runs["a"], live_server.runs["b"], live_server.base
    expected = {m: reference(live_server, m, PARITY) for m in (a, b, base)}
    assert len(set(expected.values())) == 3  # the two fine-tunes and the base really answer differently
    # the server keeps one adapter in memory (--max-adapters 1): alternating evicts and reloads them
    for model in (a, b, base, a, b):
        assert ask(client, model, PARITY) == expected[model]


def test_concurrent_requests_of_several_models_are_answered_as_if_alone(client, live_server):
    a, b, base = live_server.runs["a"], live_server.runs["b"], live_server.base
    jobs = [(m, q) for m in (a, b, base) for q in (QUESTION, PARITY)] * 2
    alone = {(m, json.dumps(q)): ask(client, m, q) for m, q in jobs[:6]}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: ask(client, job[0], job[1]), jobs))
    assert together == [alone[(m, json.dumps(q))] for m, q in jobs]


def test_legacy_completions_with_several_prompts(client, live_server):
    reply = client.completions.create(
        model=live_server.base, prompt=["The capital of France is", "Hello"], max_tokens=5, temperature=0
    )
    assert reply.object == "text_completion" and [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason in {"stop", "length"} for c in reply.choices)
    tokenizer = AutoTokenizer.from_pretrained(live_server.base)
    prompts = ["The capital of France is", "Hello"]
    assert reply.usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert 2 <= reply.usage.completion_tokens <= 10


def test_stop_sequences_end_the_answer_before_them(client, live_server):
    run = live_server.runs["a"]
    whole = ask(client, run, QUESTION, max_tokens=20)
    if len(whole) < 3:
        pytest.skip("answer too short to cut")
    stop = whole[1:3]
    reply = client.chat.completions.create(
        model=run, messages=QUESTION, max_tokens=20, temperature=0, stop=[stop]
    )
    assert reply.choices[0].message.content == whole[: whole.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client, live_server):
    kwargs = dict(model=live_server.base, messages=QUESTION, max_tokens=10, temperature=1.0, seed=5)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_errors_are_openai_shaped_and_the_server_goes_on(client, live_server):
    run = live_server.runs["a"]
    anonymous = openai.OpenAI(base_url=live_server.url, api_key="sk-spec-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        anonymous.chat.completions.create(model=run, messages=QUESTION)
    assert err.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert err.value.code == "model_not_found" and "no-such-model" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=run, messages=[{"role": "wizard", "content": "hi"}])
    assert err.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=run, messages=[])
    assert err.value.param == "messages"
    long = [{"role": "user", "content": "word " * 1200}]  # the tiny model's context is 1024 tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=run, messages=long, max_tokens=5)
    assert err.value.code == "context_length_exceeded" and "1024" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=run, messages=QUESTION, max_tokens=100_000)
    assert err.value.code == "max_tokens_too_large"
    raw = httpx.post(
        f"{live_server.url}/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {live_server.key}", "Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{live_server.url}/nope").json()["error"]["code"] == "unknown_url"
    # still serving, and every refusal is in the request log with its status
    assert ask(client, run, QUESTION) == reference(live_server, run, QUESTION)
    from specialize.monitor.request_log import RequestLog

    codes = {
        r["error_code"] for r in RequestLog(live_server.registry).requests_for() if r["status_code"] >= 400
    }
    assert {
        "invalid_api_key",
        "model_not_found",
        "invalid_request",
        "context_length_exceeded",
        "max_tokens_too_large",
        "invalid_json",
    } <= codes


def test_feedback_is_recorded_against_a_request(client, live_server):
    reply = client.chat.completions.create(
        model=live_server.runs["a"], messages=QUESTION, max_tokens=4, temperature=0
    )
    headers = {"Authorization": f"Bearer {live_server.key}"}
    body = {"request_id": reply.id, "rating": -1, "correction": "shipping"}
    sent = httpx.post(f"{live_server.url}/feedback", json=body, headers=headers)
    assert sent.status_code == 200 and sent.json()["request_id"] == reply.id
    from specialize.monitor.request_log import RequestLog

    [stored] = RequestLog(live_server.registry).feedback_for(reply.id)
    assert stored["rating"] == -1 and stored["correction"] == "shipping"
    unknown = httpx.post(
        f"{live_server.url}/feedback", json={**body, "request_id": "chatcmpl-nope"}, headers=headers
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
    empty = httpx.post(f"{live_server.url}/feedback", json={"request_id": reply.id}, headers=headers)
    assert empty.status_code == 400


def test_revoked_keys_are_refused_at_once(live_server):
    from specialize.serve.api_keys import ApiKeys

    keys = ApiKeys(live_server.registry)
    key, secret = keys.create("short-lived")
    short = openai.OpenAI(base_url=live_server.url, api_key=secret, max_retries=0)
    assert short.models.list().data
    keys.revoke(key.id)
    with pytest.raises(openai.AuthenticationError):
        short.models.list()


def test_health_and_prometheus_metrics(client, live_server):
    ask(client, live_server.base, QUESTION)
    root = live_server.url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{root}/metrics").text
    assert 'specialize_requests_total{endpoint="chat.completions"' in metrics
    assert "specialize_request_seconds_bucket" in metrics and "specialize_active_rows" in metrics
