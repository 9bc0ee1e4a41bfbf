"""The HTTP API in this process (httpx's ASGI transport): answers, refusals and the request log, route by route."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi import FastAPI
from inprocess import anyio_backend, api  # noqa: F401  (fixtures)

from specialize.serve.gate import Gate
from specialize.serve.metrics import ServerMetrics
from specialize.serve.routes import feedback

pytestmark = pytest.mark.anyio
QUESTION = [{"role": "user", "content": "Where is my parcel?"}]


def logged(api, request_id: str) -> dict:
    [row] = [r for r in api.rows() if r["id"] == request_id]
    return row


async def test_chat_whole_and_streamed_give_the_same_answer_each_logged_once(api):
    body = {"model": api.base, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    async with api.client() as client:
        whole = (await client.post("/v1/chat/completions", json=body)).json()
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert whole["object"] == "chat.completion" and whole["id"].startswith("chatcmpl-")
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert streamed.text.rstrip().endswith("data: [DONE]")
    pieces = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert pieces == whole["choices"][0]["message"]["content"]
    usage = whole["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    for request_id in (whole["id"], events[0]["id"]):
        row = logged(api, request_id)
        assert row["status_code"] == 200 and row["key_id"].startswith("key_") and row["model"] == api.base
        assert row["prompt_tokens"] == usage["prompt_tokens"]
        assert json.loads(row["response"]) == [whole["choices"][0]["message"]["content"]]


async def test_completions_continue_text_as_it_is(api):
    prompts = ["The capital of France is", "Hello"]
    body = {"model": api.base, "prompt": prompts, "max_tokens": 4, "temperature": 0, "n": 2}
    async with api.client() as client:
        reply = (await client.post("/v1/completions", json=body)).json()
    assert reply["object"] == "text_completion" and [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert reply["choices"][0]["text"] == reply["choices"][1]["text"]  # greedy: n copies agree
    expected = sum(len(api.engine.encode_text(p)) for p in prompts)
    assert reply["usage"]["prompt_tokens"] == expected == logged(api, reply["id"])["prompt_tokens"]


async def test_models_are_listed_and_retrieved(api):
    async with api.client() as client:
        listed = (await client.get("/v1/models")).json()
        one = await client.get(f"/v1/models/{api.base}")
        missing = await client.get("/v1/models/nope")
    assert [m["id"] for m in listed["data"]] == [api.base] and listed["object"] == "list"
    assert one.json()["id"] == api.base
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "no-such-model", "messages": QUESTION}, 404, "model_not_found", "model"),
        ({"model": "BASE", "messages": []}, 400, "invalid_request", "messages"),
        (
            {"model": "BASE", "messages": [{"role": "wizard", "content": "hi"}]},
            400,
            "invalid_request",
            "messages[0].role",
        ),
        (
            {"model": "BASE", "messages": QUESTION, "max_tokens": 10_000},
            400,
            "max_tokens_too_large",
            "max_tokens",
        ),
        (
            {"model": "BASE", "messages": [{"role": "user", "content": "word " * 1200}]},
            400,
            "context_length_exceeded",
            "messages",
        ),
        ([1, 2, 3], 400, "invalid_request", "body"),
    ],
)
async def test_refusals_are_openai_shaped_and_logged(api, body, status, code, param):
    if isinstance(body, dict) and body.get("model") == "BASE":
        body = {**body, "model": api.base}
    before = len(api.rows())
    async with api.client() as client:
        reply = await client.post("/v1/chat/completions", json=body)
    error = reply.json()["error"]
    assert reply.status_code == status and error["code"] == code and error["type"] == "invalid_request_error"
    assert error["param"] == (None if param == "body" else param) and error["message"]
    rows = api.rows()
    assert len(rows) == before + 1 and rows[-1]["status_code"] == status and rows[-1]["error_code"] == code


async def test_keys_invalid_json_and_unknown_paths(api):
    async with (
        api.client(key="") as anonymous,
        api.client(key="sk-spec-wrong") as wrong,
        api.client() as client,
    ):
        for reply in (await anonymous.get("/v1/models"), await wrong.get("/v1/models")):
            assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
        broken = await client.post("/v1/chat/completions", content=b"{not json")
        unknown = await client.get("/v1/nope")
        method = await client.delete("/v1/chat/completions")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"
    codes = ["invalid_api_key", "invalid_api_key", "invalid_json", "unknown_url", "method_not_allowed"]
    assert [r["error_code"] for r in api.rows()[-5:]] == codes
    assert [r["endpoint"] for r in api.rows()[-2:]] == ["unrouted", "unrouted"]


async def test_feedback_is_kept_with_its_request(api):
    async with api.client() as client:
        reply = (
            await client.post(
                "/v1/chat/completions", json={"model": api.base, "messages": QUESTION, "max_tokens": 2}
            )
        ).json()
        sent = await client.post("/v1/feedback", json={"request_id": reply["id"], "rating": 5})
        empty = await client.post("/v1/feedback", json={"request_id": reply["id"]})
        unknown = await client.post("/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": 1})
    assert sent.status_code == 200 and [f["rating"] for f in api.log.feedback_for(reply["id"])] == [5]
    assert empty.status_code == 400 and unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "request_id"


async def test_health_and_metrics_need_no_key(api):
    async with api.client() as client:
        await client.get("/v1/models")
    async with api.client(key="") as anonymous:
        health = (await anonymous.get("/health")).json()
        metrics = (await anonymous.get("/metrics")).text
    assert health["status"] == "ok" and health["base_model"] == api.base
    assert (
        'specialize_requests_total{endpoint="models"' in metrics and "specialize_queued_requests" in metrics
    )


async def test_one_router_over_a_gate_alone(api):
    """A router needs only the gate (and what its routes read): here feedback, without an engine or models."""
    import httpx2 as httpx

    app = FastAPI()
    app.state.gate = Gate(api.log, api.keys, ServerMetrics(api.engine, lambda _: False))
    app.include_router(feedback.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gate.test") as client:
        refused = await client.post("/v1/feedback", json={"request_id": "x", "rating": 1})
        bad = await client.post(
            "/v1/feedback",
            json={"request_id": "x", "stars": 3},
            headers={"Authorization": f"Bearer {api.key}"},
        )
    assert refused.status_code == 401 and bad.status_code == 400 and bad.json()["error"]["param"] == "stars"
    assert [r["error_code"] for r in api.rows()[-2:]] == ["invalid_api_key", "invalid_request"]


class ThreadRecorder:
    """The engine's tokenizer, recording which thread templates and tokenizes with it."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer, self.threads = tokenizer, []

    def __call__(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        return self._tokenizer.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


async def test_bodies_are_decoded_templated_and_tokenized_off_the_event_loop(api, monkeypatch):
    """Issue 14, defect 1: tokenizing ran on the event loop, so one large request froze every other."""
    import specialize.serve.gate as gate

    recorder = ThreadRecorder(api.engine.tokenizer)
    monkeypatch.setattr(api.engine, "tokenizer", recorder)
    decoding = []
    real_decode = gate._decode
    monkeypatch.setattr(gate, "_decode", lambda *a: decoding.append(threading.get_ident()) or real_decode(*a))
    loop_thread = threading.get_ident()
    async with api.client() as client:
        chat = await client.post(
            "/v1/chat/completions", json={"model": api.base, "messages": QUESTION, "max_tokens": 2}
        )
        text = await client.post(
            "/v1/completions", json={"model": api.base, "prompt": "Hello", "max_tokens": 2}
        )
    assert chat.status_code == text.status_code == 200
    assert len(recorder.threads) >= 3 and len(decoding) == 2  # template + tokenize, tokenize; two bodies
    assert loop_thread not in recorder.threads + decoding


async def test_every_5xx_is_answered_in_shape_and_logged_with_its_error(api, monkeypatch, tmp_path):
    """Issue 14, defect 3: the 500s were plain text and none was logged."""
    from specialize.config import load_config, save_resolved
    from specialize.runs import RunDir

    run = RunDir.create(tmp_path, "broken-run")  # a finished run whose adapter cannot be loaded
    save_resolved(load_config(None, ['data.train="x.jsonl"']), run.config)
    (run.train / "adapter").mkdir()
    (run.train / "adapter" / "adapter_config.json").write_text('{"use_dora": false}')
    api.registry.create_run(run, "broken-run", api.base, {})
    api.registry.finish_run(run.id, "completed")
    body = {"model": run.id, "messages": QUESTION, "max_tokens": 2}
    async with api.client() as client:
        whole = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        monkeypatch.setattr(api.app.state.server.models, "list", lambda *_: 1 / 0)
        crashed = await client.get("/v1/models")
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
    assert '"server_error"' in streamed.text  # a stream has sent its 200 already: the error is its last event
    assert crashed.status_code == 500 and crashed.json()["error"]["code"] == "server_error"
    rows = {r["id"]: r for r in api.rows()}
    whole_row = rows[next(r for r in rows if r.startswith("chatcmpl-") and rows[r]["model"] == run.id)]
    assert whole_row["status_code"] == 500 and "cannot load model" in whole_row["response"]
    failed = [r for r in rows.values() if r["status_code"] == 500]
    assert len(failed) == 3 and all(r["response"] for r in failed)
    assert any("ZeroDivisionError" in r["response"] for r in failed)
