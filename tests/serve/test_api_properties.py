"""Property-based tests of the HTTP API (hypothesis): whatever body a client sends to whichever endpoint, random
bytes, JSON of any shape, or near-valid requests with wrong types, lone surrogates and out-of-range numbers, the
server answers below 500, in OpenAI's error shape when it refuses, writes exactly one row to the request log, and
goes on answering."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx2 as httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import api  # noqa: F401  (fixture)

GENERATION = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]
ENDPOINTS = GENERATION * 4 + [
    ("POST", "/v1/feedback"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/files"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{text}"),
    ("GET", "/v1/files?limit={number}&order={text}&after={text}"),
    ("GET", "/v1/fine_tuning/jobs/{text}/events?limit={number}"),
    ("POST", "/v1/fine_tuning/jobs/{text}/cancel"),
    ("DELETE", "/v1/files/{text}"),
]
FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "echo",
    "tools",
    "functions",
    "response_format",
    "logit_bias",
    "suffix",
    "request_id",
    "rating",
    "correction",
    "training_file",
    "hyperparameters",
    "method",
]
odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "ünïcödé", "💥" * 3, "", " ", "null", "-1"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), odd_text
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), odd_text), inner, max_size=4),
    ),
    max_leaves=12,
)
roles = st.sampled_from(["user", "user", "system", "assistant", "developer", "tool", "wizard"])
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": st.one_of(odd_text, odd_text, values)}), max_size=3
)
token_ids = st.lists(st.integers(-5, 600), max_size=5)
prompts = st.one_of(odd_text, st.lists(odd_text, max_size=3), token_ids, st.lists(token_ids, max_size=3))


@st.composite
def near_valid(draw, base: str) -> dict:
    """A request that is mostly right: a real model, messages or a prompt, and some fields of any value."""
    body = {"model": draw(st.sampled_from([base, base, base, "no-such-model", "\ud800"]))}
    body["messages" if draw(st.booleans()) else "prompt"] = draw(st.one_of(messages, prompts))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[name] = draw(values)
    for name, small in (
        ("max_tokens", st.integers(-2, 40)),
        ("n", st.integers(0, 9)),
        ("stream", st.booleans()),
    ):
        if draw(st.booleans()):
            body[name] = draw(small)
    return body


@st.composite
def valid(draw, base: str) -> dict:
    """A request the server answers: text messages (or a prompt) and options within their ranges."""
    body: dict = {"model": base, "max_tokens": draw(st.integers(1, 12)), "n": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        body["messages"] = [{"role": "user", "content": draw(odd_text.filter(lambda t: t.isprintable()))}]
    else:
        body["prompt"] = draw(
            st.one_of(st.text(min_size=1, max_size=20), st.lists(st.integers(0, 500), min_size=1))
        )
    body["stream"] = draw(st.booleans())
    if not body["stream"] and draw(st.booleans()):
        body["logprobs"] = True if "messages" in body else draw(st.integers(0, 5))
    body["temperature"] = draw(st.sampled_from([0, 0.7, 2]))
    return body


def bodies(base: str):
    near = near_valid(base).map(lambda v: json.dumps(v).encode())
    answered = valid(base).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode()), near, near, answered
    )


def logged_rows(api) -> int:
    """How many rows the request log holds once every queued row is written."""
    import sqlalchemy as sa

    api.app.state.gate.flush()
    with api.registry.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(api.log.requests)).scalar_one())


async def send(api, method: str, path: str, body: bytes) -> httpx.Response:
    async with api.client() as client:
        headers = {
            "Content-Type": "application/json"
            if body[:1] in (b"{", b"[")
            else "multipart/form-data; boundary=x"
        }
        return await client.request(method, path, content=body if method == "POST" else None, headers=headers)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples in every run: a failure in CI reproduces on a laptop
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_request_is_answered_below_500_logged_once_and_the_server_goes_on(api, data):
    method, template = data.draw(st.sampled_from(ENDPOINTS))
    path = template.format(
        text=quote(data.draw(st.text(max_size=12)), safe="") or "x",
        number=data.draw(st.integers(-3, 20_000)),
    )
    body = data.draw(bodies(api.base))
    before = logged_rows(api)
    reply = asyncio.run(send(api, method, path, body))
    assert reply.status_code < 500, (method, path, body, reply.text)
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], reply.text
    assert logged_rows(api) == before + 1, (method, path, body, reply.status_code)
    health = asyncio.run(send(api, "GET", "/health", b""))
    assert health.status_code == 200 and health.json()["status"] == "ok"
