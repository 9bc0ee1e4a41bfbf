"""The `live_server` fixture: a live `specialize serve` on 127.0.0.1 over the tiny model and two fine-tuned runs, for the client tests."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from conftest import chat_row, classification_rows, write_jsonl

from specialize.cli.main import main
from specialize.runs import Registry

MAX_BODY_BYTES = 1_000_000  # the live server's --max-body-bytes


@dataclass(frozen=True)
class LiveServer:
    url: str  # ends in /v1
    key: str
    registry: Registry
    registry_url: str
    runs: dict[str, str]  # "a"/"b" -> run id
    base: str  # the base model's id (its directory)
    process: subprocess.Popen[bytes]
    log: pathlib.Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def logged(self, request_id: str, timeout: float = 30) -> list[dict]:
        """The request log's rows of `request_id`, once there is one (a stream's row is written as it ends)."""
        from specialize.monitor.request_log import RequestLog

        log = RequestLog(self.registry)
        return wait_until(
            lambda: [r for r in log.requests_for() if r["id"] == request_id], timeout, f"row {request_id}"
        )


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finished_run(root: pathlib.Path, name: str, base: pathlib.Path, rows: list, seed: int) -> str:
    """Fine-tune the tiny model hard enough that its answers change, through `specialize run`."""
    write_jsonl(root / name / "train.jsonl", rows[:-6])
    write_jsonl(root / name / "validation.jsonl", rows[-6:])
    config = {
        "name": name,
        "base_model": str(base),
        "seed": seed,
        "runs_dir": str(root / "runs"),
        "data": {"train": f"{name}/train.jsonl", "validation": f"{name}/validation.jsonl"},
        "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 0.03},
        "eval": {"max_examples": 3, "systems": ["fine_tuned"]},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(path)]) == 0
    registry = Registry(f"sqlite:///{root / 'runs' / 'registry.db'}")
    return next(r["id"] for r in registry.list_runs() if r["name"] == name)


def start_server(args: list[str], log: pathlib.Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "specialize", "serve", "--port", str(port), *args]
    process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, tiny_model_dir) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("serve")
    yes_no = [
        chat_row(f"Is {i} even? Answer alpha or omega.", "alpha" if i % 2 else "omega") for i in range(40)
    ]
    runs = {
        "a": finished_run(root, "clauses", tiny_model_dir, classification_rows(40), seed=1),
        "b": finished_run(root, "parity", tiny_model_dir, yes_no, seed=2),
    }
    registry_url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "specialize", "keys", "create", "--name", "tests", "--registry", registry_url],
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    port = free_port()
    log = root / "server.log"
    args = ["--base-model", str(tiny_model_dir), "--registry", registry_url, "--max-adapters", "1"]
    process = start_server(args + ["--max-tokens", "64", "--max-body-bytes", str(MAX_BODY_BYTES)], log, port)
    try:
        yield LiveServer(
            f"http://127.0.0.1:{port}/v1",
            key,
            Registry(registry_url),
            registry_url,
            runs,
            str(tiny_model_dir),
            process,
            log,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
