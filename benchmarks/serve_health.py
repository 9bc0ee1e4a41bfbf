"""`/health` latency of `specialize serve` while it refuses or serves the largest requests it allows.

Starts `specialize serve` (the embedded model by default, `--max-body-bytes` at its default of 4 MB) in a child
process and polls `GET /health` from one thread while another sends, one after the other:

1. idle: nothing else;
2. a body of the largest allowed size made of many short messages (parsed, validated and templated, then refused:
   far over the context length);
3. a body of the largest allowed size holding one long message (refused without tokenizing it all);
4. a body of the largest allowed size holding 800,000 one-token prompts for `/v1/completions` (the costliest JSON
   to parse per byte: a small list for every 5 bytes), and the most prompts a body may hold and still be parsed;
5. a body twice the limit, sent chunked (refused with 413 once the limit is read);
6. a prompt just under the context length, answered (the engine pre-fills it while /health is polled).

Printed: per case, how many /health answers came while the request was in flight, their median and largest
latency, and the request's status. Run: `python benchmarks/serve_health.py [--model DIR]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx

MAX_BODY = 4 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="base model (default: the embedded one)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    from specialize.config import DEFAULT_BASE_MODEL
    from specialize.models import resolve_model

    model = args.model or str(resolve_model(DEFAULT_BASE_MODEL))
    root = Path(tempfile.mkdtemp(prefix="serve-health-"))
    url = f"http://127.0.0.1:{args.port}"
    cmd = [
        sys.executable,
        "-m",
        "specialize",
        "serve",
        "--no-auth",
        "--base-model",
        model,
        "--port",
        str(args.port),
    ]
    cmd += ["--registry", f"sqlite:///{root / 'registry.db'}", "--max-tokens", "8"]
    server = subprocess.Popen(cmd, stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        info = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        message = {"role": "user", "content": "where is my parcel?"}
        many = {"model": info, "messages": [message] * ((MAX_BODY - 200) // (len(json.dumps(message)) + 2))}
        one = {"model": info, "messages": [{"role": "user", "content": "x" * (MAX_BODY - 200)}]}
        over = {"model": info, "messages": [{"role": "user", "content": "y" * (2 * MAX_BODY)}]}
        tokens = {"model": info, "prompt": [[1]] * ((MAX_BODY - 200) // 5), "max_tokens": 1}
        # the most a body may hold and still be parsed: 16,000 arrays, 256,000 values
        parsed = {"model": info, "prompt": [[1] * 15] * 16_000, "max_tokens": 1}
        near = {"model": info, "messages": [{"role": "user", "content": "word " * 7000}], "max_tokens": 8}
        cases = [
            ("idle", None),
            ("max-size body, 100k short messages: refused", json.dumps(many).encode()),
            ("max-size body, one 4 MB message: refused", json.dumps(one).encode()),
            ("max-size body, 800k one-token prompts: refused", json.dumps(tokens).encode()),
            ("16k prompts of 15 tokens (parsed): refused", json.dumps(parsed).encode()),
            ("8 MB body, chunked: refused 413", json.dumps(over).encode()),
            ("7000-word prompt: answered", json.dumps(near).encode()),
        ]
        print(f"model {model}; /health polled every 5 ms from another client")
        for name, body in cases:
            answered, latencies, status = measure(url, body)
            print(
                f"{name:48s} {len(latencies):4d} answers in flight  median {1000 * statistics.median(latencies):6.1f} ms"
                f"  max {1000 * max(latencies):7.1f} ms  status {status}"
            )
    finally:
        server.terminate()
        server.wait(timeout=60)


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def measure(url: str, body: bytes | None) -> tuple[int, list[float], object]:
    done, result = threading.Event(), {}

    def send() -> None:
        try:
            if body is None:
                time.sleep(1.0)
                result["status"] = "-"
                return
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            headers = {"Content-Type": "application/json"}
            path = (
                "/v1/completions"
                if body.startswith(b'{"model": "') and b'"prompt"' in body[:300]
                else "/v1/chat/completions"
            )
            reply = httpx.post(f"{url}{path}", content=chunks, headers=headers, timeout=300)
            result["status"] = reply.status_code
        finally:
            done.set()

    thread = threading.Thread(target=send)
    thread.start()
    latencies = []
    with httpx.Client(timeout=60) as client:
        while not done.is_set():
            started = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
    thread.join()
    return len(latencies), latencies, result["status"]


if __name__ == "__main__":
    main()
