"""Fine-tuning jobs of `specialize serve` (`/v1/fine_tuning/jobs`): each job is one specialize run.

Creating a job checks its files and hyperparameters and writes the run config it will train with to
`<runs_dir>/fine_tuning/<job-id>.yaml`: the server's fine-tuning config (if any) with the job's files, seed and
hyperparameters set, and the job's id as the run's name. The job's state, its run and the model id it is served as
(`ft:<base>:<suffix>:<job>`), and the events a client lists are rows of the registry's `fine_tuning_jobs` and
`fine_tuning_events` tables; training progress is read from the run's own metrics. `runner.py` runs the queued
jobs.

Status: queued -> validating_files (the run's data stage) -> running (training and evaluation) -> succeeded |
failed; cancelled from any of the first three.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from specialize.config import RunConfig, load_config
from specialize.errors import ConfigError, NotFoundError
from specialize.runs import Registry, now, write_atomic
from specialize.serve.api_keys import EVERY_KEY

ACTIVE = ("queued", "validating_files", "running")
Auto = Literal["auto"]


@dataclass(frozen=True)
class Hyperparameters:
    """OpenAI's supervised hyperparameters; "auto" takes the server's defaults."""

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    method: str = "supervised"  # or "dpo"
    beta: float | Auto = "auto"  # dpo only


@dataclass(frozen=True)
class FineTuningJob:
    """A job as stored; `hyperparameters` are the values the run trains with."""

    id: str
    key_id: str | None
    status: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int
    config_path: Path
    fine_tuned_model: str | None
    run_id: str | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class JobEvent:
    """A line of a job's history: a status change (`message`) or the training metrics of a step (`metrics`)."""

    id: str
    created_at: datetime
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class Checkpoint:
    """A usable model of a job, and the training metrics at its step."""

    step: int
    created_at: datetime
    metrics: dict[str, float | None]


class FineTuningJobs:
    """The `fine_tuning_jobs` and `fine_tuning_events` tables of a registry."""

    def __init__(self, registry: Registry, runs_dir: Path) -> None:
        import sqlalchemy as sa

        self.registry = registry
        self.engine = registry.engine
        self.runs_dir = runs_dir
        self.directory = runs_dir / "fine_tuning"
        meta = sa.MetaData()
        self.jobs = sa.Table(
            "fine_tuning_jobs",
            meta,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("key_id", sa.String(40), index=True),
            sa.Column("status", sa.String(20), nullable=False, index=True),
            sa.Column("model", sa.String(500), nullable=False),
            sa.Column("training_file", sa.String(40), nullable=False),
            sa.Column("validation_file", sa.String(40)),
            sa.Column("hyperparameters", sa.Text, nullable=False),
            sa.Column("suffix", sa.String(64)),
            sa.Column("seed", sa.Integer, nullable=False),
            sa.Column("config_path", sa.String(1000), nullable=False),
            sa.Column("fine_tuned_model", sa.String(700)),
            sa.Column("run_id", sa.String(200)),
            sa.Column("trained_tokens", sa.Integer),
            sa.Column("error", sa.Text),
            sa.Column("created_at", sa.DateTime, nullable=False, index=True),
            sa.Column("finished_at", sa.DateTime),
        )
        self.events = sa.Table(
            "fine_tuning_events",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(
                "job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id"), nullable=False, index=True
            ),
            sa.Column("level", sa.String(10), nullable=False),
            sa.Column("message", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
        meta.create_all(self.engine)

    def create(
        self,
        key_id: str | None,
        base_model: str,
        training_file: Path,
        validation_file: Path | None,
        file_ids: tuple[str, str | None],
        hyperparameters: Hyperparameters,
        suffix: str | None,
        seed: int | None,
        config_template: Path | None,
    ) -> FineTuningJob:
        """Queue a job fine-tuning `base_model` (a catalogue name or a model directory) on validated files.

        Raises:
            ConfigError: the hyperparameters (or the server's fine-tuning config) make an invalid run config.
        """
        job_id = "ftjob-" + secrets.token_hex(12)
        settings: dict[str, Any] = {
            "name": job_id,
            "base_model": base_model,
            "runs_dir": str(self.runs_dir),
            "registry": self.engine.url.render_as_string(hide_password=False),
            "data.train": str(training_file),
            "data.validation": None if validation_file is None else str(validation_file),
            "data.format": "chat" if hyperparameters.method == "supervised" else "preference",
            "train.method": "sft" if hyperparameters.method == "supervised" else "dpo",
        }
        if seed is not None:
            settings["seed"] = seed
        config, default_rate = _run_config(settings, hyperparameters, config_template)
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / f"{job_id}.yaml"
        # A plain run config (every value, paths absolute), as `specialize run` reads it: the job's child runs it.
        write_atomic(
            config_path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        )
        t = config.train
        resolved = {
            "n_epochs": int(t.epochs) if float(t.epochs).is_integer() else t.epochs,
            "batch_size": t.batch_size,
            "learning_rate_multiplier": t.learning_rate / default_rate,
        }
        if t.method == "dpo":
            resolved["beta"] = t.dpo_beta  # OpenAI shows beta only for DPO jobs, and so does the job object
        with self.engine.begin() as conn:
            conn.execute(
                self.jobs.insert().values(
                    id=job_id,
                    key_id=key_id,
                    status="queued",
                    model=base_model,
                    training_file=file_ids[0],
                    validation_file=file_ids[1],
                    hyperparameters=json.dumps(resolved),
                    suffix=suffix,
                    seed=config.seed,
                    config_path=str(config_path),
                    created_at=now(),
                )
            )
        self.add_event(job_id, f"Created fine-tuning job {job_id}; it trains as a run named {job_id}")
        return self.get(key_id, job_id)

    def get(self, key_id: str | None, job_id: str) -> FineTuningJob:
        """The job `job_id` of this key; another key's job is reported as missing, exactly like an unknown id."""
        with self.engine.connect() as conn:
            row = conn.execute(self._of(key_id).where(self.jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(
                f"No such fine-tuning job: {job_id}; GET /v1/fine_tuning/jobs lists your jobs"
            )
        return _job(row)

    def page(self, key_id: str | None, after: str | None, limit: int) -> list[FineTuningJob]:
        """This key's jobs, newest first, starting after the job `after`."""
        created = self.jobs.c.created_at
        query = self._of(key_id).order_by(created.desc(), self.jobs.c.id.desc())
        if after is not None:
            query = query.where(created < self.get(key_id, after).created_at)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query.limit(limit)).mappings().all()]

    def count_active(self, key_id: str | None) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(self._of(key_id).where(self.jobs.c.status.in_(ACTIVE))).all()
        return len(rows)

    def using_file(self, file_id: str) -> str | None:
        """An unfinished job that still needs `file_id`, if any."""
        c = self.jobs.c
        query = self.jobs.select().where(
            c.status.in_(ACTIVE) & ((c.training_file == file_id) | (c.validation_file == file_id))
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else str(row.id)

    def next_to_run(self) -> FineTuningJob | None:
        """The job to run now: one that was running when the server stopped, else the oldest queued one."""
        c = self.jobs.c
        with self.engine.connect() as conn:
            for statuses in (("validating_files", "running"), ("queued",)):
                row = (
                    conn.execute(self.jobs.select().where(c.status.in_(statuses)).order_by(c.created_at))
                    .mappings()
                    .first()
                )
                if row is not None:
                    return _job(row)
        return None

    def set_status(
        self, job_id: str, status: str, only_from: tuple[str, ...] = ACTIVE, **values: Any
    ) -> bool:
        """Move the job to `status` if it is in one of `only_from`; False when it was not (say, cancelled)."""
        c = self.jobs.c
        if "error" in values and values["error"] is not None:
            values["error"] = json.dumps(values["error"])
        if status not in ACTIVE:
            values["finished_at"] = now()
        with self.engine.begin() as conn:
            done = conn.execute(
                self.jobs.update()
                .where((c.id == job_id) & c.status.in_(only_from))
                .values(status=status, **values)
            )
        return bool(done.rowcount)

    def add_event(self, job_id: str, message: str, level: str = "info") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.events.insert().values(job_id=job_id, level=level, message=message, created_at=now())
            )

    def events_of(self, job: FineTuningJob) -> list[JobEvent]:
        """The job's status events and the training metrics of its run, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(self.events.select().where(self.events.c.job_id == job.id)).mappings().all()
        events = [
            JobEvent(f"ftevent-{r['id']}", r["created_at"], r["level"], r["message"], "message", None)
            for r in rows
        ]
        run_id = job.run_id or self.run_of(job.id)
        if run_id is not None:
            events += _metric_events(self.registry.get_metrics(run_id, "train"))
        return sorted(events, key=lambda e: (e.created_at, e.type == "message", e.id), reverse=True)

    def run_of(self, job_id: str) -> str | None:
        """The run made for a job, once its data stage has created it: the run named after the job (job ids are
        96 random bits, so no other run has that name)."""
        for run in reversed(self.registry.list_runs()):
            if run["name"] == job_id:
                return str(run["id"])
        return None

    def fine_tuned_models(self) -> dict[str, tuple[str | None, str | None]]:
        """Every job's run, the model id it is served as once the job has succeeded (None before) and the key
        that owns it: run id -> (`ft:` model id, key id)."""
        import sqlalchemy as sa

        c = self.jobs.c
        query = sa.select(c.run_id, c.fine_tuned_model, c.status, c.key_id).where(c.run_id.is_not(None))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {str(run): (model if status == "succeeded" else None, key) for run, model, status, key in rows}

    def status_of(self, job_id: str) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(self.jobs.select().where(self.jobs.c.id == job_id)).one().status)

    def checkpoints_of(self, job: FineTuningJob) -> list[Checkpoint]:
        """The models of a job a client can use: the final one, once the job has succeeded.

        specialize's training checkpoints are state to resume from (deleted when training ends), not models that
        are served, so they are not listed.
        """
        if job.status != "succeeded" or job.run_id is None or job.finished_at is None:
            return []
        stepped = [m for m in self.registry.get_metrics(job.run_id, "train") if m["step"] is not None]
        last = max((m["step"] for m in stepped), default=0)
        values = {m["name"]: m["value"] for m in stepped if m["step"] == last}
        metrics = {
            "step": float(last),
            "train_loss": values.get("loss"),
            "valid_loss": values.get("validation_loss"),
            "full_valid_loss": values.get("validation_loss"),
        }
        return [Checkpoint(last, job.finished_at, metrics)]

    def _of(self, key_id: str | None) -> Any:
        """The rows of key `key_id` (None: made without keys; `EVERY_KEY`: every key's, for an admin)."""
        owner = self.jobs.c.key_id
        if key_id == EVERY_KEY:
            return self.jobs.select()
        return self.jobs.select().where(owner.is_(None) if key_id is None else owner == key_id)


def fine_tuned_model_id(job: FineTuningJob) -> str:
    """The model id a job's model is served as, OpenAI's shape: `ft:<base>:<suffix>:<job>` (a base model given as
    a directory is named by the folder)."""
    base = Path(job.model).name if Path(job.model).expanduser().is_dir() else job.model
    return f"ft:{base}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


def _run_config(
    settings: dict[str, Any], hp: Hyperparameters, template: Path | None
) -> tuple[RunConfig, float]:
    """The job's run config (the server's fine-tuning config with `settings` and the hyperparameters set on it),
    and the learning rate a multiplier of 1 stands for."""

    def load(values: dict[str, Any]) -> RunConfig:
        try:
            return load_config(template, [f"{k}={json.dumps(v)}" for k, v in values.items()])
        except ConfigError as exc:
            raise ConfigError(f"the job makes an invalid run config: {exc}") from None

    default_rate = load(settings).train.learning_rate
    tuned = dict(settings)
    if hp.n_epochs != "auto":
        tuned["train.epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        tuned["train.batch_size"] = hp.batch_size
    if hp.beta != "auto":
        tuned["train.dpo_beta"] = hp.beta
    if hp.learning_rate_multiplier != "auto":
        # OpenAI's multiplier scales a base rate it picks per model for a full fine-tune. A LoRA adapter learns at
        # rates about ten times higher, so the multiplier scales specialize's LoRA rate instead: 1.0 is
        # train.learning_rate of the server's fine-tuning config (2e-4 by default), 2.0 twice that.
        tuned["train.learning_rate"] = hp.learning_rate_multiplier * default_rate
    return load(tuned), default_rate


def _metric_events(metrics: list[dict[str, Any]]) -> list[JobEvent]:
    """One `metrics` event per logged step, shaped like OpenAI's (`step`, `train_loss`, `valid_loss`)."""
    names = {"loss": "train_loss", "validation_loss": "valid_loss", "learning_rate": "learning_rate"}
    by_step: dict[int, tuple[datetime, int, dict[str, Any]]] = {}
    for m in metrics:
        if m["step"] is None or m["name"] not in names:
            continue
        created, first_id, data = by_step.setdefault(
            m["step"], (m["created_at"], m["id"], {"step": m["step"]})
        )
        data[names[m["name"]]] = m["value"]
    events = []
    for step, (created, first_id, data) in sorted(by_step.items()):
        shown = ", ".join(f"{k.replace('_', ' ')}={v:.4g}" for k, v in data.items() if k != "step")
        events.append(
            JobEvent(f"ftevent-m{first_id}", created, "info", f"Step {step}: {shown}", "metrics", data)
        )
    return events


def _job(row: Any) -> FineTuningJob:
    values = dict(row)
    values["hyperparameters"] = json.loads(values["hyperparameters"])
    values["error"] = json.loads(values["error"]) if values["error"] else None
    values["config_path"] = Path(values["config_path"])
    return FineTuningJob(**values)
