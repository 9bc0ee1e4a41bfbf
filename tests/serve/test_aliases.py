"""`model="NAME@alias"`: the server answers with the run the alias names now, follows `promote` and `rollback`
without a restart, and loses no request when the alias moves under load."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from conftest import chat_row, classification_rows, write_jsonl
from inprocess import InProcess, anyio_backend, build  # noqa: F401  (anyio_backend: a fixture)
from live import free_port, start_server, wait_until

from specialize.cli.main import main
from specialize.monitor.traffic import read_exchanges
from specialize.runs import Registry, now

CLIENTS = 16
MAX_PER_CLIENT = 40  # bounds the test: each client stops after this many at most
PROMPTS = [f"Label this message: where is my delivery {i}" for i in range(8)]


def train(root: pathlib.Path, base: pathlib.Path, rows: list[dict[str, Any]], seed: int) -> str:
    """A LoRA run named `tickets`, fine-tuned hard enough that its answers differ from the other's."""
    folder = root / f"data-{seed}"
    write_jsonl(folder / "train.jsonl", rows[:-6])
    write_jsonl(folder / "validation.jsonl", rows[-6:])
    config = {
        "name": "tickets",
        "base_model": str(base),
        "seed": seed,
        "runs_dir": str(root / "runs"),
        "data": {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")},
        "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 0.03},
        "eval": {"max_examples": 3, "systems": ["fine_tuned"]},
    }
    path = root / f"tickets-{seed}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    before = {r["id"] for r in Registry(f"sqlite:///{root / 'runs' / 'registry.db'}").list_runs()}
    assert main(["--quiet", "run", str(path)]) == 0
    (run_id,) = {r["id"] for r in Registry(f"sqlite:///{root / 'runs' / 'registry.db'}").list_runs()} - before
    return run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("aliases")
    parity = [
        chat_row(f"Is {i} even? Answer alpha or omega.", "alpha" if i % 2 else "omega") for i in range(40)
    ]
    a = train(root, tiny_model_dir, classification_rows(40), seed=1)
    b = train(root, tiny_model_dir, parity, seed=2)
    url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    return {"root": root, "a": a, "b": b, "url": url, "registry": Registry(url), "base": tiny_model_dir}


@pytest.fixture(scope="module")
def api(runs: dict[str, Any], tiny_model_dir: pathlib.Path) -> Iterator[InProcess]:
    served = build(runs["root"] / "runs", tiny_model_dir)
    served.engine.start()
    yield served
    served.engine.stop()


def ask(client: httpx.Client, model: str, prompt: str, stream: bool = False) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": stream,
    }
    reply = client.post("/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    if not stream:
        return str(reply.json()["choices"][0]["message"]["content"])
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert reply.text.rstrip().endswith("data: [DONE]")
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])


@pytest.mark.anyio
async def test_an_alias_is_followed_as_it_moves(runs, api):
    registry = runs["registry"]
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 6, "temperature": 0}

    async def answer(client: Any, model: str) -> tuple[int, str]:
        reply = await client.post("/v1/chat/completions", json={**body, "model": model})
        content = reply.json()["choices"][0]["message"]["content"] if reply.status_code == 200 else ""
        return reply.status_code, content

    async with api.client() as client:
        assert (await answer(client, "tickets@production"))[0] == 404
        direct = {run: (await answer(client, runs[run]))[1] for run in ("a", "b")}
        assert direct["a"] != direct["b"]
        registry.set_alias(runs["a"], "production")
        assert await answer(client, "tickets@production") == (200, direct["a"])
        registry.set_alias(runs["b"], "production")
        assert await answer(client, "tickets@production") == (200, direct["b"])
        listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        missing = await client.post("/v1/chat/completions", json={**body, "model": "tickets@nowhere"})
    assert {"tickets@production", runs["a"], runs["b"]} <= listed
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "specialize aliases" in missing.json()["error"]["message"]


def test_sixteen_clients_lose_no_request_across_an_alias_move(runs, tmp_path):
    """16 clients (half streaming) ask `tickets@production` while another process promotes B over A."""
    registry, url = runs["registry"], runs["url"]
    registry.set_alias(runs["a"], "production", note="load test: start on A")
    out = subprocess.run(
        [sys.executable, "-m", "specialize", "keys", "create", "--registry", url],
        capture_output=True,
        text=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    port = free_port()
    args = ["--base-model", str(runs["base"]), "--registry", url, "--max-tokens", "16"]
    server = start_server(args, tmp_path / "server.log", port)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=headers) as client:
            expected = {run: [ask(client, runs[run], p) for p in PROMPTS] for run in ("a", "b")}
        assert any(x != y for x, y in zip(expected["a"], expected["b"], strict=True))
        answers: list[tuple[int, str, float]] = []
        errors: list[BaseException] = []
        started, stop = threading.Barrier(CLIENTS + 1), threading.Event()

        def client_loop(i: int) -> None:
            """Ask until told to stop (at most MAX_PER_CLIENT times), half of the clients streaming."""
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=headers) as client:
                    started.wait()
                    for j in range(MAX_PER_CLIENT):
                        if stop.is_set():
                            return
                        k = (i + j) % len(PROMPTS)
                        sent = time.time()
                        answer = ask(client, "tickets@production", PROMPTS[k], stream=i % 2 == 1)
                        answers.append((k, answer, sent))
            except BaseException as exc:  # noqa: BLE001  (reported below, with every other client's)
                errors.append(exc)

        load_started = now()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        started.wait()
        wait_until(lambda: len(answers) >= 2 * CLIENTS or errors, what="a first round of answers")
        promote = [sys.executable, "-m", "specialize", "promote", runs["b"], "--alias", "production"]
        moved = subprocess.run([*promote, "--registry", url], capture_output=True, text=True)
        moved_at = time.time()
        after = len(answers)
        wait_until(lambda: len(answers) >= after + 2 * CLIENTS or errors, what="answers after the move")
        stop.set()
        for t in threads:
            t.join(timeout=300)
        assert moved.returncode == 0, moved.stderr
        assert not errors, errors
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert 4 * CLIENTS <= len(answers) <= CLIENTS * MAX_PER_CLIENT
    by_run = Counter(
        "a" if answer == expected["a"][k] else "b" if answer == expected["b"][k] else "neither"
        for k, answer, _ in answers
    )
    assert by_run["neither"] == 0 and by_run["a"] > 0 and by_run["b"] > 0, by_run
    # every request sent after the promotion returned was answered by B
    assert all(answer == expected["b"][k] for k, answer, sent in answers if sent > moved_at + 0.05)
    logged = read_exchanges(registry, {"tickets@production"}, since=load_started)
    assert len(logged) == len(answers) and all(e.status_code == 200 for e in logged)
    # the log names the run that answered each request, the old one for a request in flight at the move
    assert all(
        e.answer == expected["a" if e.run_id == runs["a"] else "b"][PROMPTS.index(e.messages[-1]["content"])]
        for e in logged
    )
    assert {e.run_id for e in logged} == {runs["a"], runs["b"]}
