"""Serving: `specialize serve` under concurrent clients against a sequential `generate` loop, and a load test.

Both sides answer the same prompts (user turns of ../shared/datasets/general_instructions, rendered
with the chat template) greedily with SmolLM2-135M-Instruct in float32, up to `--max-tokens` new tokens:

1. sequential: the model in this process, transformers' `generate` on one prompt after another (what a script
   without a server does);
2. served: `specialize serve` in a child process, `--clients` threads of the official `openai` client sending
   the same prompts over HTTP on 127.0.0.1. The server decodes concurrent requests together (see
   specialize/models/engine.py).

Printed: completion tokens per second of each and their ratio. Then the load test: `--load-clients` clients send
chat requests for `--load-seconds` seconds; every request must be answered and be in the registry's request log.
Printed: requests, errors, logged rows, p50/p95 latency, throughput.

Run it with `make bench` or `python benchmarks/serve_throughput.py` (about 5 minutes on 2 cores;
`--prompts 8 --load-seconds 10` for a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from generate_loop import generate_one

DATA = Path(
    os.environ.get("SPECIALIZE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


def user_turns(n: int, split: str) -> list[list[dict[str, str]]]:
    """The first user turn of the first `n` rows of a split of general_instructions."""
    path = DATA / "general_instructions" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[m for m in r["messages"] if m["role"] == "user"][:1] for r in rows[:n]]


def sequential(model_path: Path, conversations: list, max_tokens: int) -> tuple[int, float]:
    """Completion tokens and seconds of a plain one-prompt-at-a-time `generate` loop."""

    from specialize.data import render_prompt
    from specialize.models import load_model

    model, tokenizer = load_model(model_path)
    model.eval()
    tokens, started = 0, time.perf_counter()
    for messages in conversations:
        new = generate_one(model, tokenizer, render_prompt(tokenizer, messages), max_tokens)
        tokens += len([t for t in new if t != tokenizer.eos_token_id])
    return tokens, time.perf_counter() - started


def start_server(registry: str, port: int, log: Path, max_tokens: int) -> subprocess.Popen[bytes]:
    import httpx2

    cmd = [sys.executable, "-m", "specialize", "serve", "--registry", registry, "--port", str(port)]
    cmd += ["--max-tokens", str(max(max_tokens, 64))]
    process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not start")


def served(client, model: str, conversations: list, max_tokens: int, clients: int) -> tuple[int, float]:
    """Completion tokens and seconds for `clients` concurrent clients answering every conversation once."""

    def ask(messages):
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0
        )
        return reply.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(ask, conversations))
    return tokens, time.perf_counter() - started


def load_test(client, model: str, conversations: list, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` threads sending requests back to back for `seconds`; every outcome is recorded."""
    latencies: list[float] = []
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=model,
                    messages=conversations[i % len(conversations)],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                with lock:
                    latencies.append(time.perf_counter() - started)
                    ids.append(reply.id)
            except Exception as exc:  # counted, not raised: the test reports every failure
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"latencies": latencies, "ids": ids, "errors": errors, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-clients", type=int, default=16)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--load-max-tokens", type=int, default=32)
    args = parser.parse_args()

    import openai

    from specialize.config import DEFAULT_BASE_MODEL
    from specialize.models import resolve_model
    from specialize.monitor.request_log import RequestLog
    from specialize.runs import Registry
    from specialize.serve.api_keys import ApiKeys

    model_path = resolve_model(DEFAULT_BASE_MODEL)
    conversations = user_turns(args.prompts, "train")
    print(
        f"sequential generate loop: {len(conversations)} prompts, up to {args.max_tokens} new tokens ...",
        flush=True,
    )
    seq_tokens, seq_seconds = sequential(model_path, conversations, args.max_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        registry_url = f"sqlite:///{tmp}/registry.db"
        registry = Registry(registry_url)
        _, secret = ApiKeys(registry).create("bench")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = Path(tmp) / "server.log"
        server = start_server(registry_url, port, log, args.max_tokens)
        try:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0, timeout=600
            )
            print(f"served: {args.clients} concurrent clients, same prompts ...", flush=True)
            srv_tokens, srv_seconds = served(
                client, DEFAULT_BASE_MODEL, conversations, args.max_tokens, args.clients
            )
            print(f"load test: {args.load_clients} clients for {args.load_seconds:.0f} s ...", flush=True)
            load = load_test(
                client,
                DEFAULT_BASE_MODEL,
                user_turns(500, "validation") + user_turns(500, "train")[args.prompts :],
                args.load_clients,
                args.load_seconds,
                args.load_max_tokens,
            )
            logged = {r["id"]: r for r in RequestLog(registry).requests_for(DEFAULT_BASE_MODEL)}
        finally:
            server.terminate()
            server.wait(timeout=60)

    seq_rate, srv_rate = seq_tokens / seq_seconds, srv_tokens / srv_seconds
    lat = sorted(load["latencies"])
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    answered_logged = sum(1 for i in load["ids"] if i in logged and logged[i]["status_code"] == 200)
    completion = sum(logged[i]["completion_tokens"] for i in load["ids"] if i in logged)
    import torch

    print(
        f"""
SmolLM2-135M-Instruct, float32, greedy, {os.cpu_count()} CPU threads, torch {torch.__version__}
                                      sequential generate   specialize serve ({args.clients} clients)
prompts                               {len(conversations):>19}   {len(conversations):>10}
completion tokens                     {seq_tokens:>19,}   {srv_tokens:>10,}
seconds                               {seq_seconds:>19.1f}   {srv_seconds:>10.1f}
completion tokens/s                   {seq_rate:>19.1f}   {srv_rate:>10.1f}

served / sequential tokens/s:         {srv_rate / seq_rate:.2f}x (HTTP, JSON and logging included on the served side)

load test: {args.load_clients} concurrent clients for {load["wall"]:.0f} s, up to {args.load_max_tokens} new tokens each
requests answered                     {len(load["ids"])}
errors                                {len(load["errors"])}{"  " + load["errors"][0] if load["errors"] else ""}
answered and in the request log       {answered_logged} of {len(load["ids"])}
latency p50 / p95 / max (s)           {p(0.5):.2f} / {p(0.95):.2f} / {lat[-1] if lat else float("nan"):.2f}
requests/s, completion tokens/s       {len(load["ids"]) / load["wall"]:.2f}, {completion / load["wall"]:.1f}
mean latency (s)                      {statistics.mean(lat) if lat else float("nan"):.2f}"""
    )
    if load["errors"] or answered_logged != len(load["ids"]):
        raise SystemExit("load test lost requests")


if __name__ == "__main__":
    main()
