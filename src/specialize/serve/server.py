"""`specialize serve`: its options, and the app they build (engine, served models, gate, fine-tuning API)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import DEFAULT_BASE_MODEL, DEFAULT_REGISTRY
from specialize.errors import ConfigError
from specialize.monitor.content import LogContent
from specialize.runs import Registry

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServeOptions:
    """How `specialize serve` runs; every field is a command-line option."""

    base_model: str | None = None
    runs: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    registry: str = DEFAULT_REGISTRY
    auth: bool = True
    max_batch: int = 16
    max_adapters: int = 4
    max_tokens: int = 512
    runs_dir: str | None = None  # default: the folder of a SQLite registry, else ./runs
    fine_tune_config: str | None = None
    max_upload_mb: int = 512
    max_body_bytes: int = 4 * 2**20  # per JSON request body (gate.Limits)
    log_content: LogContent = (
        "redacted"  # what the request log keeps of prompts and answers (monitor/content.py)
    )


def build_app(options: ServeOptions) -> Any:
    """The ASGI app for `options`, with its model loaded; checks the options before loading anything."""
    from specialize.config import load_config
    from specialize.models import resolve_model
    from specialize.models.engine import load_engine
    from specialize.monitor.request_log import RequestLog
    from specialize.serve.api_keys import ApiKeys
    from specialize.serve.app import create_app
    from specialize.serve.fine_tuning import FineTuning, FineTuningJobs, JobRunner, UploadedFiles, routes
    from specialize.serve.gate import Gate, Limits
    from specialize.serve.metrics import ServerMetrics
    from specialize.serve.served_models import ServedModels
    from specialize.serve.state import Server
    from specialize.ui import UiContext, ui_router

    registry = Registry(options.registry)
    keys = ApiKeys(registry) if options.auth else None
    if keys is not None and not keys.any_active():
        raise ConfigError(
            f"no active API key in the registry {options.registry}; create one with `specialize keys create`, "
            "or start with --no-auth to serve without keys (loopback only)"
        )
    if not options.auth and options.host not in LOOPBACK:
        raise ConfigError(
            f"--no-auth serves anyone who can reach {options.host}; it is allowed on 127.0.0.1 only"
        )
    base_name = options.base_model
    if base_name is None:
        base_name = registry.get_run(options.runs[0])["base_model"] if options.runs else DEFAULT_BASE_MODEL
    template = Path(options.fine_tune_config) if options.fine_tune_config else None
    if template is not None:
        load_config(template, ['data.train="-"'])  # a broken config fails now, not at the first job
    base_path = resolve_model(base_name)
    runs_dir = (Path(options.runs_dir) if options.runs_dir else _runs_dir(options.registry)).resolve()
    jobs = FineTuningJobs(registry, runs_dir)
    models = ServedModels(base_name, base_path, registry, list(options.runs) or None, jobs.fine_tuned_models)
    engine = load_engine(base_path, options.max_batch, options.max_adapters)
    runner = JobRunner(jobs)
    fine_tuning = FineTuning(UploadedFiles(registry, runs_dir / "files"), jobs, runner, base_name, template)
    limits = Limits(
        max_tokens=options.max_tokens,
        max_body_bytes=options.max_body_bytes,
        max_upload_bytes=options.max_upload_mb * 2**20,
    )
    gate = Gate(RequestLog(registry, options.log_content), keys, ServerMetrics(engine, models.known), limits)
    return create_app(
        Server(engine, models, gate),
        routers=[
            routes.files_router,
            routes.jobs_router,
            ui_router(UiContext(registry, keys, models.base.id, job_owners=jobs.owners)),
        ],
        workers=[runner],
        fine_tuning=fine_tuning,
    )


def _runs_dir(registry_url: str) -> Path:
    """Where jobs' runs and uploaded files go by default: next to a SQLite registry, else ./runs."""
    if registry_url.startswith("sqlite:///") and registry_url != "sqlite:///:memory:":
        return Path(registry_url.removeprefix("sqlite:///")).parent
    return Path("runs")


def serve(options: ServeOptions) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then finish the requests in flight and stop."""
    import uvicorn

    app = build_app(options)
    host = f"[{options.host}]" if ":" in options.host else options.host
    print(f"specialize serve: OpenAI-compatible API on http://{host}:{options.port}/v1", flush=True)
    print(f"dashboard: http://{host}:{options.port}/ui", flush=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=30)
