"""Fixtures of the dashboard tests: a registry of finished tiny runs, a live `specialize ui` over it, a browser.

The registry holds two classification runs made with `specialize run` on the tiny model: `clauses` (its data has
a `<script>` row, personal data and a duplicate, so the audit has rejects and PII findings) and `tuned` (another
learning rate and LoRA rank, for the comparison). The server fine-tunes jobs with a long `max_steps`, so a job
started from the new-run page is still training while a test watches its curve; tests cancel it.

The browser is Debian's chromium driven by Playwright through `executable_path`: no browser download. Where it
is missing the browser tests are skipped, unless SPECIALIZE_REQUIRE_BROWSER is set (CI sets it).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest
import yaml
from conftest import chat_row, classification_rows, write_jsonl

from specialize.cli.main import main
from specialize.runs import Registry
from specialize.serve.api_keys import ApiKeys

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT_ROW = "<script>window.__xss = 1</script> refund me at jane.doe@example.com"


@dataclass(frozen=True)
class Dashboard:
    url: str  # http://127.0.0.1:PORT
    key: str
    registry: Registry
    runs: dict[str, str]  # "clauses" / "tuned" -> run id
    root: pathlib.Path
    log: pathlib.Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(root: pathlib.Path, model: pathlib.Path, name: str, train_rows: list, **train: object) -> str:
    """A finished classification run of the tiny model through `specialize run`; its id."""
    write_jsonl(root / name / "train.jsonl", train_rows)
    validation = classification_rows(9, start=1000) + [
        chat_row(f"Label this message: {SCRIPT_ROW}", "billing", "billing")
    ]
    write_jsonl(root / name / "validation.jsonl", validation)
    config = {
        "name": name,
        "base_model": str(model),
        "runs_dir": str(root / "runs"),
        "data": {"train": f"{name}/train.jsonl", "validation": f"{name}/validation.jsonl"},
        "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 0.03, "log_every": 2, **train},
        "eval": {"systems": ["base_zero_shot", "fine_tuned"]},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(path)]) == 0
    registry = Registry(f"sqlite:///{root / 'runs' / 'registry.db'}")
    return next(r["id"] for r in registry.list_runs() if r["name"] == name)


def fixture_runs(root: pathlib.Path, model: pathlib.Path) -> dict[str, str]:
    rows = classification_rows(36)
    dirty = [
        *rows,
        chat_row(f"Label this message: {SCRIPT_ROW}", "billing", "billing"),
        dict(rows[0]),  # an exact duplicate: rejected
        chat_row("Label this message: call me on +44 20 7946 0958 about the parcel", "shipping", "shipping"),
    ]
    return {
        "clauses": make_run(root, model, "clauses", dirty),
        "tuned": make_run(root, model, "tuned", rows, learning_rate=0.01, lora={"rank": 8}),
    }


def start_server(args: list[str], log: pathlib.Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "specialize", "ui", "--port", str(port), *args]
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


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    runs = fixture_runs(root, tiny_model_dir)
    registry_url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    registry = Registry(registry_url)
    _, key = ApiKeys(registry).create("browser tests")
    template = root / "fine-tune.yaml"
    doc = {
        "train": {"max_steps": 5000, "batch_size": 2, "log_every": 2},
        "eval": {"systems": ["fine_tuned"], "max_examples": 2},
    }
    template.write_text(yaml.safe_dump(doc), encoding="utf-8")
    port = free_port()
    log = root / "server.log"
    args = [
        "--base-model",
        str(tiny_model_dir),
        "--registry",
        registry_url,
        "--fine-tune-config",
        str(template),
    ]
    process = start_server(args + ["--max-tokens", "32"], log, port)
    try:
        yield Dashboard(f"http://127.0.0.1:{port}", key, registry, runs, root, log)
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("SPECIALIZE_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium: apt-get install -y chromium")
        pytest.skip(f"needs {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    # Module-scoped: Playwright's sync API keeps an event loop running on this thread while it is open, which
    # would stop later tests from starting their own (asyncio.run).
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest) -> pathlib.Path:
    """Where each page's screenshot goes: test-output/ui/ of the checkout (gitignored; CI keeps it)."""
    out = request.config.rootpath / "test-output" / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out
