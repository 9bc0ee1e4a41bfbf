"""16 clients ask `NAME@ALIAS` of a real served model while another process moves the alias: is any request lost?

The CI test (tests/serve/test_aliases.py) does this on a tiny model; this script does it on real runs, e.g. a
banking77 parent and its retrained child. It starts `specialize serve`, has 16 clients (half of them streaming)
send prompts of a data file to `NAME@ALIAS` until each has sent `--per-client` requests or been told to stop,
runs `--move` (a `specialize` command line, e.g. `promote CHILD --alias production` or `rollback production`)
once `--before` answers have come back, and stops the clients `--after` answers later. Then it checks, from the
replies and the server's request log (which records the run that answered each request):

- every request sent got an HTTP 200 reply with a non-empty answer, and the log holds one row for each;
- requests sent after the move returned were answered by the run the alias names after it;
- both runs answered some requests (the move happened under load).

Prints the counts as JSON and exits 1 if a check fails.

    python benchmarks/alias_load.py banking77@production --registry sqlite:///runs/registry.db \
        --prompts ../shared/datasets/banking77/validation.jsonl --move "promote CHILD --alias production"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa

from specialize.runs import Registry

CLIENTS = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="NAME@ALIAS")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL of conversations; the user turns")
    parser.add_argument("--move", required=True, help="the specialize command that moves the alias")
    parser.add_argument("--per-client", type=int, default=6, help="most requests a client sends")
    parser.add_argument("--before", type=int, default=CLIENTS, help="answers before the move")
    parser.add_argument("--after", type=int, default=CLIENTS, help="answers after the move, then stop")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--base-model", help="the server's base model, when not the default")
    args = parser.parse_args()
    registry = Registry(args.registry)
    name, _, alias = args.model.partition("@")
    prompts = [
        json.loads(line)["messages"][0]["content"]
        for line in args.prompts.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    key = subprocess.run(
        [sys.executable, "-m", "specialize", "keys", "create", "--name", "load", "--registry", args.registry],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    server = subprocess.Popen(
        [sys.executable, "-m", "specialize", "serve", "--registry", args.registry, "--port", str(args.port)]
        + ["--max-tokens", str(args.max_tokens)]
        + (["--base-model", args.base_model] if args.base_model else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    base = f"http://127.0.0.1:{args.port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    replies: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=900) as client:
            for j in range(args.per_client):
                if stop.is_set():
                    return
                prompt = prompts[(i * args.per_client + j) % len(prompts)]
                body = {
                    "model": args.model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                    "stream": i % 2 == 1,
                }
                sent = time.time()
                try:
                    reply = client.post("/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"client {i} request {j}: {exc!r}")
                    continue
                record = {"client": i, "sent": sent, "status": reply.status_code, "stream": i % 2 == 1}
                if reply.status_code != 200:
                    record["error"] = reply.text[:200]
                elif i % 2 == 1:
                    events = [json.loads(x[6:]) for x in reply.text.splitlines() if x.startswith("data: {")]
                    record["id"] = events[0]["id"] if events else None
                    record["answer"] = "".join(
                        e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]
                    )
                    record["done"] = reply.text.rstrip().endswith("data: [DONE]")
                else:
                    record["id"] = reply.json()["id"]
                    record["answer"] = reply.json()["choices"][0]["message"]["content"]
                    record["done"] = True
                with lock:
                    replies.append(record)

    try:
        wait_for(f"http://127.0.0.1:{args.port}/health")
        before_run = registry.alias_target(name, alias)
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_count(replies, args.before, threads)
        moved = subprocess.run(
            [sys.executable, "-m", "specialize", *shlex.split(args.move), "--registry", args.registry],
            capture_output=True,
            text=True,
        )
        moved_at = time.time()
        after_run = registry.alias_target(name, alias)
        at_move = len(replies)
        wait_count(replies, at_move + args.after, threads)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=120)
    logged = logged_runs(registry, [r["id"] for r in replies if r.get("id")])
    ok = [r for r in replies if r["status"] == 200 and r.get("done") and r.get("answer", "").strip()]
    answered_by = Counter(logged.get(r.get("id"), "not logged") for r in replies)
    after_move = [r for r in replies if r["sent"] > moved_at]
    summary = {
        "model": args.model,
        "move": args.move,
        "move_exit": moved.returncode,
        "move_output": (moved.stdout + moved.stderr).strip(),
        "alias_before": before_run,
        "alias_after": after_run,
        "clients": CLIENTS,
        "sent": len(replies) + len(failures),
        "answered_200": len(ok),
        "streamed": sum(r["stream"] for r in replies),
        "transport_failures": failures,
        "non_200": [r for r in replies if r["status"] != 200],
        "logged": len(logged),
        "answered_by": dict(answered_by),
        "sent_after_the_move": len(after_move),
        "sent_after_the_move_answered_by_new_run": sum(
            logged.get(r.get("id")) == after_run for r in after_move
        ),
    }
    checks = {
        "no request lost": summary["sent"] == summary["answered_200"] == summary["logged"],
        "the move succeeded": moved.returncode == 0 and before_run != after_run,
        "after the move, the new run answers": summary["sent_after_the_move_answered_by_new_run"]
        == len(after_move),
        "both runs answered": answered_by.get(before_run, 0) > 0 and answered_by.get(after_run, 0) > 0,
    }
    summary["checks"] = checks
    print(json.dumps(summary, indent=2))
    return 0 if all(checks.values()) else 1


def wait_count(replies: list[Any], n: int, threads: list[threading.Thread]) -> None:
    """Until `n` replies came back, or every client is done."""
    while len(replies) < n and any(t.is_alive() for t in threads):
        time.sleep(0.2)


def logged_runs(registry: Registry, ids: list[str]) -> dict[str, str]:
    """Request id -> the run the server's log says answered it."""
    table = sa.Table("served_requests", sa.MetaData(), autoload_with=registry.engine)
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.run_id).where(table.c.id.in_(ids))).all()
    return {row.id: row.run_id for row in rows}


def wait_for(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server did not answer {url} within {seconds} s")


if __name__ == "__main__":
    sys.exit(main())
