"""OpenAI's Files and fine-tuning jobs API on `specialize serve`, so code written for OpenAI fine-tuning runs here.

`POST /v1/files` (multipart, purpose `fine-tune`) keeps a chat JSONL file once the data stage finds no bad line;
`POST /v1/fine_tuning/jobs` queues a job that trains as a specialize run in the background, and its model
(`ft:<base>:<suffix>:<job>`) is served by `/v1/chat/completions` as soon as it succeeds. The same API keys,
request log and OpenAI-shaped errors as the chat endpoints apply; a key sees only its own files and jobs, and
another key's are answered with 404 as if they did not exist. What each endpoint stores and how jobs run lives in
`files.py`, `jobs.py` and `runner.py` beside this module, which parses and shapes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from specialize.errors import ConfigError, DataError, NotFoundError
from specialize.serve.api_keys import EVERY_KEY
from specialize.serve.fine_tuning.files import UploadedFile, UploadedFiles, row_format
from specialize.serve.fine_tuning.jobs import FineTuningJob, FineTuningJobs, Hyperparameters, JobEvent
from specialize.serve.fine_tuning.runner import JobRunner
from specialize.serve.gate import ApiError, GatedRoute, gate_of
from specialize.serve.schemas import FineTuningJobRequest, SupervisedHyperparameters


@dataclass(frozen=True)
class FineTuning:
    """What the fine-tuning endpoints work with: the stores, the worker, and the base model jobs train (the
    server's own, by the name it was given: a catalogue name or a model directory)."""

    files: UploadedFiles
    jobs: FineTuningJobs
    runner: JobRunner
    base_name: str
    config: Path | None  # the run config jobs start from (`serve --fine-tune-config`)

    def accepts(self, model: str) -> bool:
        """A job may name the base by its served id or, for a model directory, by the folder's name."""
        return model in (self.base_name, Path(self.base_name).name)


def fine_tuning_of(request: Request) -> FineTuning:
    ft: FineTuning = request.app.state.fine_tuning
    return ft


def _viewer(request: Request) -> str | None:
    """Whose files and jobs a request sees: its key's, or every key's for an admin key."""
    return EVERY_KEY if request.state.admin and request.state.served.key_id else request.state.served.key_id


files_router = APIRouter(route_class=GatedRoute)
jobs_router = APIRouter(route_class=GatedRoute)


@files_router.post("/v1/files", name="files")
async def upload_file(request: Request) -> Response:
    ft, served = fine_tuning_of(request), request.state.served
    fields = await _form(request, gate_of(request).limits.max_upload_bytes)
    upload = fields.get("file")
    purpose = fields.get("purpose")
    if upload is None or upload[0] is None:
        raise ApiError(400, "Missing the 'file' part (a file with a filename).", "invalid_request", "file")
    if purpose is None:
        raise ApiError(400, "Missing 'purpose'; send purpose='fine-tune'.", "invalid_request", "purpose")
    filename, content = upload[0], upload[1]
    if filename.encode("utf-8", "replace").decode() != filename:  # undecodable bytes in the part's header
        raise ApiError(
            400, "Invalid value for 'file': its filename is not UTF-8 text.", "invalid_unicode", "file"
        )
    kind = purpose[1].decode(errors="replace")
    served.request = {"filename": filename, "purpose": kind, "bytes": len(content)}
    try:
        stored = await asyncio.to_thread(ft.files.add, served.key_id, filename, kind, content)
    except DataError as exc:
        param = "purpose" if not exc.problems else "file"
        raise ApiError(400, str(exc), "invalid_file" if exc.problems else "invalid_request", param) from None
    return JSONResponse(_file_object(stored))


@files_router.get("/v1/files", name="files")
async def list_files(
    request: Request,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    purpose: str | None = None,
) -> Response:
    ft = fine_tuning_of(request)
    if purpose not in (None, "fine-tune"):
        found: list[UploadedFile] = []
    else:
        found = await asyncio.to_thread(
            _or_404, ft.files.page, _viewer(request), after, limit + 1, order == "desc"
        )
    return _page([_file_object(f) for f in found], limit)


@files_router.get("/v1/files/{file_id}", name="files")
async def get_file(file_id: str, request: Request) -> Response:
    ft = fine_tuning_of(request)
    stored = await asyncio.to_thread(_or_404, ft.files.get, _viewer(request), file_id)
    return JSONResponse(_file_object(stored))


@files_router.get("/v1/files/{file_id}/content", name="files")
async def file_content(file_id: str, request: Request) -> Response:
    ft = fine_tuning_of(request)
    stored = await asyncio.to_thread(_or_404, ft.files.get, _viewer(request), file_id)
    return FileResponse(stored.path, media_type="application/octet-stream", filename=stored.filename)


@files_router.delete("/v1/files/{file_id}", name="files")
async def delete_file(file_id: str, request: Request) -> Response:
    ft = fine_tuning_of(request)
    await asyncio.to_thread(_or_404, ft.files.get, _viewer(request), file_id)
    job = await asyncio.to_thread(ft.jobs.using_file, file_id)
    if job is not None:
        raise ApiError(
            409,
            f"File {file_id} is used by fine-tuning job {job}, which has not finished; wait for it or cancel it.",
            "file_in_use",
            "file_id",
        )
    await asyncio.to_thread(ft.files.delete, _viewer(request), file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


@jobs_router.post("/v1/fine_tuning/jobs", name="fine_tuning.jobs")
async def create_job(request: Request) -> Response:
    ft, served = fine_tuning_of(request), request.state.served
    body: FineTuningJobRequest = await gate_of(request).parse(request, FineTuningJobRequest)
    hyperparameters = _hyperparameters(body)
    if not ft.accepts(body.model):
        raise ApiError(
            400,
            f"Model {body.model} cannot be fine-tuned on this server: it fine-tunes its base model "
            f"{ft.base_name}; send model='{Path(ft.base_name).name}'.",
            "model_not_available",
            "model",
        )
    files = []
    for param, file_id in (
        ("training_file", body.training_file),
        ("validation_file", body.validation_file),
    ):
        if file_id is not None:
            try:
                files.append(await asyncio.to_thread(ft.files.get, _viewer(request), file_id))
            except NotFoundError as exc:
                raise ApiError(400, f"Invalid {param}: {exc}", "invalid_file", param) from None
    for param, file in zip(("training_file", "validation_file"), files, strict=False):
        given = "preference" if row_format(file.path.read_bytes()[:1_000_000]) == "preference" else "chat"
        wanted = "preference" if hyperparameters.method == "dpo" else "chat"
        if given != wanted:
            raise ApiError(
                400,
                f"Invalid {param}: {file.id} holds {given} rows, and a {hyperparameters.method} job needs "
                f"{wanted} rows ({'input, preferred_output, non_preferred_output' if wanted == 'preference' else 'messages'}).",
                "invalid_file",
                param,
            )
    active = await asyncio.to_thread(ft.jobs.count_active, served.key_id)
    if active >= gate_of(request).limits.max_active_jobs:
        raise ApiError(
            429,
            f"This API key has {active} unfinished fine-tuning jobs, the most this server takes; wait for one "
            "to finish or cancel one.",
            "rate_limit_exceeded",
        )
    try:
        job = await asyncio.to_thread(
            ft.jobs.create,
            served.key_id,
            ft.base_name,
            files[0].path,
            files[1].path if len(files) > 1 else None,
            (files[0].id, files[1].id if len(files) > 1 else None),
            hyperparameters,
            body.suffix,
            body.seed,
            ft.config,
        )
    except ConfigError as exc:
        raise ApiError(400, str(exc), "invalid_request", "hyperparameters") from None
    ft.runner.wake()
    return JSONResponse(_job_object(job))


@jobs_router.get("/v1/fine_tuning/jobs", name="fine_tuning.jobs")
async def list_jobs(
    request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)
) -> Response:
    ft = fine_tuning_of(request)
    jobs = await asyncio.to_thread(_or_404, ft.jobs.page, _viewer(request), after, limit + 1)
    return _page([_job_object(j) for j in jobs], limit)


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}", name="fine_tuning.jobs")
async def get_job(job_id: str, request: Request) -> Response:
    ft = fine_tuning_of(request)
    job = await asyncio.to_thread(_or_404, ft.jobs.get, _viewer(request), job_id)
    return JSONResponse(_job_object(job))


@jobs_router.post("/v1/fine_tuning/jobs/{job_id}/cancel", name="fine_tuning.jobs")
async def cancel_job(job_id: str, request: Request) -> Response:
    ft = fine_tuning_of(request)
    job = await asyncio.to_thread(_or_404, ft.jobs.get, _viewer(request), job_id)
    if not await asyncio.to_thread(ft.jobs.set_status, job_id, "cancelled"):
        raise ApiError(
            400,
            f"Job {job_id} has already {job.status}; only unfinished jobs can be cancelled.",
            "job_not_cancellable",
        )
    await asyncio.to_thread(ft.jobs.add_event, job_id, "Fine-tuning job cancelled")
    ft.runner.wake()  # the worker kills the job's process within a second
    job = await asyncio.to_thread(ft.jobs.get, _viewer(request), job_id)
    return JSONResponse(_job_object(job))


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}/events", name="fine_tuning.jobs")
async def job_events(
    job_id: str, request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)
) -> Response:
    ft = fine_tuning_of(request)
    job = await asyncio.to_thread(_or_404, ft.jobs.get, _viewer(request), job_id)
    events = await asyncio.to_thread(ft.jobs.events_of, job)
    return _page([_event_object(e) for e in _after(events, after)], limit)


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", name="fine_tuning.jobs")
async def job_checkpoints(
    job_id: str, request: Request, after: str | None = None, limit: int = Query(10, ge=1, le=100)
) -> Response:
    ft = fine_tuning_of(request)
    job = await asyncio.to_thread(_or_404, ft.jobs.get, _viewer(request), job_id)
    checkpoints = await asyncio.to_thread(ft.jobs.checkpoints_of, job)
    shaped = [
        {
            "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{c.step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": _ts(c.created_at),
            "fine_tuned_model_checkpoint": job.fine_tuned_model,
            "fine_tuning_job_id": job.id,
            "step_number": c.step,
            "metrics": c.metrics,
        }
        for c in checkpoints
    ]
    return _page(_after(shaped, after), limit)


async def _form(request: Request, max_bytes: int) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name -> (filename, bytes).

    Parsed with the standard library's MIME parser: FastAPI's own form parsing needs the `python-multipart`
    package for this one endpoint, and a multipart body is a MIME message the `email` package reads exactly.
    """
    from email.parser import BytesParser
    from email.policy import HTTP

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            400,
            "Send the file as multipart/form-data with the parts 'file' and 'purpose'.",
            "invalid_request",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _upload_too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _upload_too_large(max_bytes)
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + bytes(body)
    )
    if not message.is_multipart():
        raise ApiError(
            400, "The multipart body could not be read; send it as the OpenAI client does.", "invalid_request"
        )
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return parts


def _upload_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"The upload is over this server's limit of {max_bytes // 2**20} MB per file.",
        "file_too_large",
        "file",
    )


def _hyperparameters(body: FineTuningJobRequest) -> Hyperparameters:
    method = body.method
    if method is not None and method.type == "reinforcement":
        raise ApiError(
            400,
            "Method 'reinforcement' is not supported: specialize has no reinforcement fine-tuning trainer yet. Use "
            "method={'type': 'supervised'} with chat examples, or {'type': 'dpo'} with preference pairs.",
            "unsupported_method",
            "method.type",
        )
    kind = "supervised" if method is None else method.type
    section = None if method is None else method.dpo if kind == "dpo" else method.supervised
    given = section.hyperparameters if section is not None else None
    if given is not None and body.hyperparameters is not None:
        raise ApiError(
            400,
            f"Give hyperparameters in method.{kind}.hyperparameters or at the top level, not both.",
            "invalid_request",
            "hyperparameters",
        )
    chosen = given or body.hyperparameters or SupervisedHyperparameters()
    beta: Any = getattr(chosen, "beta", "auto")
    return Hyperparameters(chosen.n_epochs, chosen.batch_size, chosen.learning_rate_multiplier, kind, beta)


def _or_404(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except NotFoundError as exc:
        raise ApiError(404, str(exc), "not_found") from None


def _after(items: list[Any], after: str | None) -> list[Any]:
    """The items after the one with id `after` (all of them when it is None or unknown)."""
    ids = [i.id if isinstance(i, JobEvent) else i["id"] for i in items]
    return items[ids.index(after) + 1 :] if after in ids else items


def _page(items: list[Any], limit: int) -> Response:
    return JSONResponse({"object": "list", "data": items[:limit], "has_more": len(items) > limit})


def _ts(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.replace(tzinfo=UTC).timestamp())


def _file_object(f: UploadedFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": _ts(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _job_object(job: FineTuningJob) -> dict[str, Any]:
    kind = "dpo" if "beta" in job.hyperparameters else "supervised"
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": job.model,
        "created_at": _ts(job.created_at),
        "finished_at": _ts(job.finished_at),
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "specialize",
        "result_files": [],
        "status": job.status,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": job.hyperparameters,
        "method": {"type": kind, kind: {"hyperparameters": job.hyperparameters}},
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "seed": job.seed,
        "user_provided_suffix": job.suffix,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
    }


def _event_object(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }
