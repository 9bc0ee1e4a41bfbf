"""The `api` fixture: the server's app in this process over the tiny model and a real registry, reached through
httpx's ASGI transport (no socket, no child process), for fast API tests."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest
from fastapi import FastAPI

from specialize.models.engine import Engine, load_engine
from specialize.monitor.request_log import RequestLog
from specialize.runs import Registry
from specialize.serve.api_keys import ApiKeys
from specialize.serve.app import create_app
from specialize.serve.fine_tuning import FineTuning, FineTuningJobs, JobRunner, UploadedFiles, routes
from specialize.serve.gate import Gate, Limits
from specialize.serve.metrics import ServerMetrics
from specialize.serve.served_models import ServedModels
from specialize.serve.state import Server


@dataclass
class InProcess:
    app: FastAPI
    key: str
    registry: Registry
    keys: ApiKeys
    log: RequestLog
    engine: Engine
    base: str  # the base model's id

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        """A client of the app; `key=""` sends no Authorization header."""
        secret = self.key if key is None else key
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://specialize.test", headers=headers
        )

    def rows(self) -> list[dict]:
        """The request log, once every row queued so far is written (a stream's row is queued as it ends)."""
        self.app.state.gate.flush()
        return self.log.requests_for()


def build(root: pathlib.Path, model_dir: pathlib.Path, limits: Limits | None = None) -> InProcess:
    """The app with every router, the fine-tuning API's too (its worker is not started: jobs stay queued)."""
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    keys = ApiKeys(registry)
    _, secret = keys.create("tests")
    engine = load_engine(model_dir, max_batch=8, max_adapters=2)
    jobs = FineTuningJobs(registry, root / "runs")
    models = ServedModels(str(model_dir), model_dir, registry, aliases=jobs.fine_tuned_models)
    log = RequestLog(registry)
    gate = Gate(log, keys, ServerMetrics(engine, models.known), limits or Limits(max_tokens=32))
    fine_tuning = FineTuning(
        UploadedFiles(registry, root / "files"), jobs, JobRunner(jobs), str(model_dir), None
    )
    app = create_app(
        Server(engine, models, gate),
        routers=[routes.files_router, routes.jobs_router],
        fine_tuning=fine_tuning,
    )
    return InProcess(app, secret, registry, keys, log, engine, str(model_dir))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> Iterator[InProcess]:
    served = build(tmp_path_factory.mktemp("in-process"), tiny_model_dir)
    served.engine.start()  # the app's lifespan would; httpx's ASGI transport does not run it
    yield served
    served.engine.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
