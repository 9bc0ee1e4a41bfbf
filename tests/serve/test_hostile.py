"""A live `specialize serve` against a hostile client: each test is one defect of issue 14 that a client could
trigger (named in its docstring); it failed before the fix and passes now."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time

import httpx2 as httpx
import openai
from live import MAX_BODY_BYTES, live_server  # noqa: F401  (fixture)

from specialize.monitor.request_log import RequestLog

QUESTION = [{"role": "user", "content": "Label this message: where is my delivery 7"}]


def chat(live_server, body, **kwargs) -> httpx.Response:
    """POST a body (a dict, bytes, or an iterator of byte chunks, sent chunked) to /v1/chat/completions."""
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {**live_server.headers, "Content-Type": "application/json"}
    return httpx.post(
        f"{live_server.url}/chat/completions", content=content, headers=headers, timeout=120, **kwargs
    )


class Pacer:
    """Counts the /health answers; a body sent through `chunks` waits for a new one after each of its chunks, so
    answers are known to come while the server reads the body, however fast this machine reads it."""

    def __init__(self) -> None:
        self.answers = 0
        self.sending = False
        self.changed = threading.Condition()

    def answered(self) -> None:
        with self.changed:
            self.answers += 1
            self.changed.notify_all()

    def wait_for_an_answer(self) -> None:
        """Return after the next /health answer, or after 30 s without one (a stalled server: the test fails)."""
        with self.changed:
            seen = self.answers
            self.changed.wait_for(lambda: self.answers > seen, timeout=30)


def health_while(live_server, send) -> tuple[list[float], list[float], object]:
    """Poll /health while `send(pacer)` runs on a thread; the latencies of the answers that came after the body's
    first chunk was sent and before its answer, the latencies of all, and what `send` returned."""
    pacer, finished, result = Pacer(), threading.Event(), {}

    def run() -> None:
        try:
            result["reply"] = send(pacer)
        finally:
            finished.set()

    during, every = [], []
    with httpx.Client(timeout=60) as client:
        thread = threading.Thread(target=run)
        thread.start()
        while not finished.is_set():
            was_sending = pacer.sending
            started = time.perf_counter()
            assert client.get(f"{live_server.root}/health").json()["status"] == "ok"
            latency = time.perf_counter() - started
            every.append(latency)
            if was_sending and not finished.is_set():
                during.append(latency)
            pacer.answered()
            time.sleep(0.005)
    thread.join()
    return during, every, result["reply"]


def chunks(body: bytes, pacer: Pacer, size: int = 65536):
    """The body in chunks, each after a /health answer: the server must answer while it reads the rest."""
    pacer.sending = True
    for start in range(0, len(body), size):
        if start:
            pacer.wait_for_an_answer()
        yield body[start : start + size]


def test_health_answers_while_a_maximum_size_request_is_handled(live_server):
    """Defect 1: one large request froze every other (tokenizing on the event loop): a 20 MB body made /health
    take 29 s. A body of the largest allowed size, many small messages, is read and refused while /health
    answers (`benchmarks/serve_health.py` measures how fast, for this and other bodies)."""
    message = {"role": "user", "content": "where is my parcel?"}
    one = len(json.dumps(message)) + 2
    body = {"model": live_server.base, "messages": [message] * ((MAX_BODY_BYTES - 200) // one)}
    raw = json.dumps(body).encode()
    assert MAX_BODY_BYTES - 1000 < len(raw) <= MAX_BODY_BYTES
    during, every, reply = health_while(live_server, lambda pacer: chat(live_server, chunks(raw, pacer)))
    assert (
        reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    )  # 38,000 messages
    assert during, f"no /health answer while the request was handled ({len(every)} in all)"


def test_a_body_over_the_limit_is_refused_413_and_never_stored_whole(live_server):
    """Defect 1: there was no body-size limit; a 20 MB body was refused only after 34 s and stored whole in
    the request log."""
    big = json.dumps(
        {"model": live_server.base, "messages": [{"role": "user", "content": "x" * (3 * MAX_BODY_BYTES)}]}
    )
    declared = chat(live_server, big.encode())  # Content-Length says it all: refused before the body is read
    error = declared.json()["error"]
    assert (
        declared.status_code == 413
        and error["code"] == "request_too_large"
        and error["type"] == "invalid_request_error"
    )
    during, _, streamed = health_while(
        live_server, lambda pacer: chat(live_server, chunks(big.encode(), pacer))
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
    rows = [
        r for r in RequestLog(live_server.registry).requests_for() if r["error_code"] == "request_too_large"
    ]
    assert len(rows) >= 2 and all(len(r["request"] or "") < 100_000 for r in rows)
    # an allowed body is stored up to the cap, with its size
    long = "y" * (MAX_BODY_BYTES // 2)
    reply = chat(live_server, {"model": live_server.base, "messages": [{"role": "user", "content": long}]})
    assert reply.status_code == 400
    row = RequestLog(live_server.registry).requests_for()[-1]  # written before the answer was sent
    stored = json.loads(row["request"])
    assert (
        row["error_code"] == "context_length_exceeded"
        and stored["truncated"]
        and '"content": "yyy' in stored["head"]
    )
    assert stored["chars"] > MAX_BODY_BYTES // 2 and len(row["request"]) < 100_000


def stream_id(first: str) -> str:
    found = re.search(r'"id": "(chatcmpl-[0-9a-f]+)"', first)
    assert found, first
    return found.group(1)


LONG_STREAM = {"messages": QUESTION, "max_tokens": 64, "temperature": 1.0, "n": 8, "stream": True}


def test_a_stream_abandoned_after_one_chunk_is_logged_once(live_server):
    """Defect 2: when a client stopped reading, the final write of the request row was cancelled with the stream
    (3 of 3 abandoned streams had no row)."""
    ids = []
    for _ in range(3):
        body = {**LONG_STREAM, "model": live_server.base}
        with httpx.stream(
            "POST", f"{live_server.url}/chat/completions", json=body, headers=live_server.headers
        ) as reply:
            first = next(reply.iter_lines())  # one chunk, then the client goes away
        ids.append(stream_id(first))
    for request_id in ids:
        [row] = live_server.logged(request_id)
        assert row["status_code"] == 499 and row["error_code"] == "client_closed_request"


def test_a_stream_cut_by_a_reset_connection_is_logged_once(live_server):
    """Defect 2, with the connection reset (RST) instead of closed."""
    host, port = live_server.root.removeprefix("http://").split(":")
    body = json.dumps({**LONG_STREAM, "model": live_server.base}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {live_server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head.encode() + body)
    received = b""
    while b'"id": "chatcmpl-' not in received or b"\n\n" not in received.split(b'"id": "chatcmpl-')[1]:
        received += sock.recv(4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    sock.close()
    [row] = live_server.logged(stream_id(received.decode(errors="replace")))
    assert row["status_code"] == 499


def test_streams_read_to_the_end_by_the_openai_client_are_logged_once(live_server):
    """Defect 2: 1 of 4 fully read streams of the `openai` client had no row."""
    client = openai.OpenAI(base_url=live_server.url, api_key=live_server.key, max_retries=0)
    for _ in range(4):
        stream = client.chat.completions.create(
            model=live_server.base, messages=QUESTION, max_tokens=8, stream=True
        )
        request_id = next(iter(stream)).id
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        [row] = live_server.logged(request_id)
        assert row["status_code"] == 200 and isinstance(text, str)


def test_a_lone_surrogate_is_a_400_naming_the_field_and_metrics_go_on(live_server):
    """Defect 3: a lone surrogate in `model` or in a message gave a plain-text 500, none of them logged, and once
    sent in `model`, GET /metrics answered 500 until a restart."""
    cases = {
        "model": b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
        "messages[0].content": b'{"model": "%s", "messages": [{"role": "user", "content": "a\\udfffb"}]}'
        % live_server.base.encode(),
    }
    before = len(RequestLog(live_server.registry).requests_for())
    for field, raw in cases.items():
        reply = chat(live_server, raw)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == field and reply.json()["error"]["code"] == "invalid_unicode"
    assert httpx.get(f"{live_server.root}/metrics").status_code == 200
    assert httpx.get(f"{live_server.root}/health").status_code == 200
    rows = RequestLog(live_server.registry).requests_for()[before:]
    assert [r["error_code"] for r in rows if r["error_code"] == "invalid_unicode"] == ["invalid_unicode"] * 2


def model_labels(live_server) -> set[str]:
    metrics = httpx.get(f"{live_server.root}/metrics").text
    return set(re.findall(r'model="([^"]*)"', metrics))


def test_metrics_label_only_models_the_server_knows(live_server):
    """Defect 4: every `model` name a client sent became a Prometheus label, even on a 404 (200 junk names grew
    /metrics from 10 KB to 54 KB, without bound)."""
    for i in range(40):
        reply = chat(live_server, {"model": f"junk-{i}", "messages": QUESTION})
        assert reply.status_code == 404
    labels = model_labels(live_server)
    known = {live_server.base, *live_server.runs.values(), "unknown", ""}
    assert "unknown" in labels and labels <= known, labels - known
